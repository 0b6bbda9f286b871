"""Curvature: Hessian-vector products and diagnostics."""
