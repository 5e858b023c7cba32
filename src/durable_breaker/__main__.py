"""`python -m durable_breaker`: the command line."""

from ._cli import main

main()
