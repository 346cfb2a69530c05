// Package deploy is imgate's deploy kit: systemd units (systemd/), the
// sysctls of a host holding a million connections (sysctl/), Kubernetes
// manifests (kubernetes/), Prometheus alert rules and scrape configuration
// (prometheus/) and a Grafana dashboard (grafana/). README.md says how to use
// each; docs/operations.md, "Deploying", how an upgrade drains.
//
// It has no code of its own outside its tests, which hold the kit to the
// binaries it runs: every flag and IMGATE_* variable it sets is one the
// binary takes, the stop deadlines cover the node's drain, the probes and
// ports match the listeners, and every metric the alerts and the dashboard
// query is served by the real binaries' /metrics.
package deploy
