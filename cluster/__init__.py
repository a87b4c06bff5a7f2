"""Getting omniway runs onto a Ray cluster.

- `local_cluster.sh`: a real Ray head (and optional second node) on 127.0.0.1,
  for `omniway submit` on one machine and for the cluster tests.
- `kuberay/rayjob.yaml`: a pipeline run as a KubeRay `RayJob`.
- `launcher/aws.yaml`: a Ray cluster launcher config.

- `jobs.py`: `omniway submit` / `omniway jobs`, the Ray Jobs client (it adds those
  subcommands to the `omniway` command line).

cluster/ may import pipelines' public API (`pipelines.config.load_pipeline`); pipelines,
tasks and model have no import of cluster (the CLI loads `cluster.jobs` by name).
"""
