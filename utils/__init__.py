"""The ground floor: what every room uses (environment, logging, file I/O, distributed, download, safe
unpickling, weight files, config parsing); it imports from no other folder of the repo."""
