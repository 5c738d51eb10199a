"""Research tooling: grids of training runs, their studies (scored snapshots) and the frontier."""
