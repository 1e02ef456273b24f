"""Report stage: RUN/report/index.html, a static page (no server, nothing fetched from outside the
folder) with an overview, plots and one section per cluster with thumbnails read back by key."""
