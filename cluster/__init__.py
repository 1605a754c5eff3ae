"""Ray start/connect and placement (ray_setup, roles), a local head and `ray job submit` helpers
(local_head, submit, preflight), KubeRay manifests and offline checks (kuberay, manifest_checks,
dockerfile_checks). Importing any of these modules starts nothing and does not import Ray.
See docs/DEPLOYMENT.md.
"""
