"""The edge: what opens paths and URIs (local or `s3://`), and nothing of Ray. Storage, dataset
layouts, output files, model folders, ImageNet weights, the report's pages, plots and image grids.
May import the core, the edge, and the face's plain data (`config`, `errors`): docs/architecture.md."""
