"""The manifest checks scripts/check_charts.py runs: Kubernetes' own schemas
(kube.py), the CRDs of the pinned KubeRay and KServe releases with their
operators' rules (crds.py), and the checks used without the CRD files
(sdk_fallbacks.py)."""
