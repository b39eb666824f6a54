"""Tools over the labs rather than labs: the README's results table, the HTML report, the benchmarks, and the
check that dvc.yaml's stages read what the code reads."""
