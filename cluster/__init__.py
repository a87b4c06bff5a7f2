"""Getting omniway runs onto a Ray cluster.

- `local_cluster.sh`: a real Ray head (and optional second node) on 127.0.0.1,
  for `omniway submit` on one machine and for the cluster tests.
- `kuberay/rayjob.yaml`: a pipeline run as a KubeRay `RayJob`.
- `launcher/aws.yaml`: a Ray cluster launcher config.

Submission itself is `omniway submit` / `omniway jobs` (Ray Jobs API).
"""
