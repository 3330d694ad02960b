"""Reports: plots and tables from run directories; privacy-utility sweeps."""
