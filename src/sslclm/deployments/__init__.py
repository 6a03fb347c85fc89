"""Deployment of managed certificates to certificate stores: bindings, the deploy job, drift, store scans."""
