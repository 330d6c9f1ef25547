"""fcnn's benchmarks: each module that is a command says so in its docstring (see README.md)."""
