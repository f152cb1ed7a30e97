"""The memtrace command line: argument parsing and printing, one module per subcommand."""
