"""The run machinery: the entry point, the run lifecycle, the logger and the run-directory files, host syncs, seeds in
lockstep. It may import the science, never the analysis."""
