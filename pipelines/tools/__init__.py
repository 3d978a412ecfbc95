"""Tools around the pipeline: `make bench` (`bench`, `bench_concurrency`) and the Debian packages a
fresh machine lacks (`system_packages`)."""
