"""What an operator watches the daemon with: Prometheus metrics and health checks over one
HTTP listener ([metrics] listen). [arbiter process]
"""
