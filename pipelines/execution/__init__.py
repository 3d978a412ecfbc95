"""How a command's (run, fold) units are trained: one after another in this process, or on Dask workers
(`cluster`), behind one executor interface, with the deadline guard of a time budget (`runner`)."""
