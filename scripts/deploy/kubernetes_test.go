package deploy

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/yaml"
)

const k8sDir = "kubernetes"

// manifests are the kit's Kubernetes objects, each decoded strictly into its
// API type: a misspelt or misplaced field fails the test, as the API server
// would refuse it.
type manifests struct {
	configMaps   map[string]*corev1.ConfigMap
	services     map[string]*corev1.Service
	deployments  map[string]*appsv1.Deployment
	statefulSets map[string]*appsv1.StatefulSet
	hpas         map[string]*autoscalingv2.HorizontalPodAutoscaler
	pdbs         map[string]*policyv1.PodDisruptionBudget
}

func readManifests(t *testing.T) manifests {
	t.Helper()
	var kust struct {
		APIVersion string   `json:"apiVersion"`
		Kind       string   `json:"kind"`
		Namespace  string   `json:"namespace"`
		Resources  []string `json:"resources"`
		Images     []struct {
			Name    string `json:"name"`
			NewName string `json:"newName,omitempty"`
			NewTag  string `json:"newTag,omitempty"`
		} `json:"images"`
	}
	b, err := os.ReadFile(filepath.Join(k8sDir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(b, &kust); err != nil {
		t.Fatalf("kustomization.yaml: %v", err)
	}
	files, _ := filepath.Glob(filepath.Join(k8sDir, "*.yaml"))
	if len(kust.Resources) != len(files)-1 {
		t.Errorf("kustomization.yaml lists %v; the directory holds %v: every manifest is applied", kust.Resources, files)
	}
	m := manifests{configMaps: map[string]*corev1.ConfigMap{}, services: map[string]*corev1.Service{},
		deployments: map[string]*appsv1.Deployment{}, statefulSets: map[string]*appsv1.StatefulSet{},
		hpas: map[string]*autoscalingv2.HorizontalPodAutoscaler{}, pdbs: map[string]*policyv1.PodDisruptionBudget{}}
	for _, r := range kust.Resources {
		b, err := os.ReadFile(filepath.Join(k8sDir, r))
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(b), -1) {
			if strings.TrimSpace(regexp.MustCompile(`(?m)^\s*#.*$`).ReplaceAllString(doc, "")) == "" {
				continue
			}
			where := fmt.Sprintf("%s document %d", r, i+1)
			var head struct {
				APIVersion string `json:"apiVersion"`
				Kind       string `json:"kind"`
				Metadata   struct {
					Name      string `json:"name"`
					Namespace string `json:"namespace"`
				} `json:"metadata"`
			}
			if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
				t.Fatalf("%s: %v", where, err)
			}
			if head.Metadata.Name == "" {
				t.Errorf("%s: no metadata.name", where)
			}
			var obj any
			switch head.APIVersion + " " + head.Kind {
			case "v1 Namespace":
				obj = &corev1.Namespace{}
			case "v1 ConfigMap":
				cm := &corev1.ConfigMap{}
				m.configMaps[head.Metadata.Name], obj = cm, cm
			case "v1 Service":
				s := &corev1.Service{}
				m.services[head.Metadata.Name], obj = s, s
			case "apps/v1 Deployment":
				d := &appsv1.Deployment{}
				m.deployments[head.Metadata.Name], obj = d, d
			case "apps/v1 StatefulSet":
				s := &appsv1.StatefulSet{}
				m.statefulSets[head.Metadata.Name], obj = s, s
			case "autoscaling/v2 HorizontalPodAutoscaler":
				h := &autoscalingv2.HorizontalPodAutoscaler{}
				m.hpas[head.Metadata.Name], obj = h, h
			case "policy/v1 PodDisruptionBudget":
				p := &policyv1.PodDisruptionBudget{}
				m.pdbs[head.Metadata.Name], obj = p, p
			default:
				t.Fatalf("%s: %s %s: not a kind this test knows; teach it", where, head.APIVersion, head.Kind)
			}
			if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
				t.Errorf("%s (%s %s): %v", where, head.Kind, head.Metadata.Name, err)
			}
		}
	}
	return m
}

// k8sExpand fills in the $(VAR) references of container args with values
// of the kind the downward API gives.
func k8sExpand(s string) string {
	return strings.NewReplacer("$(POD_NAME)", "imgate-node-0", "$(POD_IP)", "10.0.1.17", "$(HOST_IP)", "10.0.1.17").Replace(s)
}

// workload is a pod template the kit runs one of the binaries in.
type workload struct {
	kind, name string
	pod        *corev1.PodTemplateSpec
	c          *corev1.Container
	bin        string
	args       settings // from args, then env, then envFrom config maps
}

func (m manifests) workloads(t *testing.T) []workload {
	t.Helper()
	var out []workload
	add := func(kind, name string, pod *corev1.PodTemplateSpec) {
		if len(pod.Spec.Containers) != 1 {
			t.Fatalf("%s %s: %d containers, want 1", kind, name, len(pod.Spec.Containers))
		}
		c := &pod.Spec.Containers[0]
		if len(c.Command) != 1 || !strings.HasPrefix(c.Command[0], "/usr/local/bin/") {
			t.Fatalf("%s %s: command %v: want [/usr/local/bin/<binary>] (the image's layout, scripts/deploy/Dockerfile)", kind, name, c.Command)
		}
		w := workload{kind: kind, name: name, pod: pod, c: c, bin: strings.TrimPrefix(c.Command[0], "/usr/local/bin/")}
		where := kind + " " + name
		// Lowest precedence first: the binaries take a flag over its
		// variable, and the kubelet a container's env over its envFrom.
		for _, ef := range c.EnvFrom {
			if ef.ConfigMapRef == nil {
				continue
			}
			cm, ok := m.configMaps[ef.ConfigMapRef.Name]
			if !ok {
				t.Errorf("%s: envFrom ConfigMap %s is not in the kit", where, ef.ConfigMapRef.Name)
				continue
			}
			for _, k := range sortedKeys(cm.Data) {
				f, ok := envFlag(k)
				if !ok {
					t.Errorf("ConfigMap %s: %s is not an IMGATE_* variable", cm.Name, k)
					continue
				}
				w.args = append(w.args, setting{f, cm.Data[k], "ConfigMap " + cm.Name + " " + k})
			}
		}
		for _, e := range c.Env {
			if f, ok := envFlag(e.Name); ok {
				w.args = append(w.args, setting{f, e.Value, where + " env " + e.Name})
			}
		}
		w.args = append(w.args, parseArgs(t, where+" args", c.Args)...)
		out = append(out, w)
	}
	for n, d := range m.deployments {
		add("Deployment", n, &d.Spec.Template)
	}
	for n, s := range m.statefulSets {
		add("StatefulSet", n, &s.Spec.Template)
	}
	return out
}

// argOf is the value of flag among the container's args only.
func argOf(t *testing.T, w workload, flag string) (string, bool) {
	return parseArgs(t, w.kind+" "+w.name, w.c.Args).get(flag)
}

// port returns the port of a host:port flag value.
func port(t *testing.T, where, hostport string) int32 {
	t.Helper()
	_, p, err := net.SplitHostPort(hostport)
	if err != nil {
		t.Fatalf("%s: %q: %v", where, hostport, err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatalf("%s: port %q: %v", where, p, err)
	}
	return int32(n)
}

func containerPort(c *corev1.Container, name string) (corev1.ContainerPort, bool) {
	for _, p := range c.Ports {
		if p.Name == name {
			return p, true
		}
	}
	return corev1.ContainerPort{}, false
}

func labelsMatch(sel, labels map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// probePaths are the HTTP probe paths of every workload, by binary, for the
// live test to ask the running binaries.
func probePaths(t *testing.T) map[string][]string {
	out := map[string][]string{}
	for _, w := range readManifests(t).workloads(t) {
		for _, p := range []*corev1.Probe{w.c.ReadinessProbe, w.c.LivenessProbe, w.c.StartupProbe} {
			if p != nil && p.HTTPGet != nil {
				out[w.bin] = append(out[w.bin], p.HTTPGet.Path)
			}
		}
	}
	return out
}

// The manifests: real flags and variables, ports and probes that match the
// listeners, stop deadlines that cover the drain, and the objects that
// refer to each other present and matching.
func TestKubernetesManifests(t *testing.T) {
	m := readManifests(t)
	ws := m.workloads(t)
	if len(m.deployments) != 1 || len(m.statefulSets) != 1 {
		t.Fatalf("%d Deployments and %d StatefulSets: want the dispatcher's and the nodes'", len(m.deployments), len(m.statefulSets))
	}
	byBin := map[string]workload{}
	for _, w := range ws {
		byBin[w.bin] = w
		checkSettings(t, w.bin, w.args, k8sExpand)
		where := w.kind + " " + w.name
		spec := w.pod.Spec

		// Every $(VAR) an arg uses is defined in the container's env.
		defined := map[string]bool{}
		for _, e := range w.c.Env {
			defined[e.Name] = true
		}
		for _, a := range w.c.Args {
			for _, ref := range regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`).FindAllStringSubmatch(a, -1) {
				if !defined[ref[1]] {
					t.Errorf("%s: arg %q uses $(%s), not in the container's env (the kubelet would pass it as is)", where, a, ref[1])
				}
			}
		}
		// Secrets and etcd endpoints come from the environment, not argv.
		for _, k := range []string{"token-keys", "admin-token", "push-token", "auth-jwt-secret", "etcd-endpoints"} {
			if _, ok := argOf(t, w, k); ok {
				t.Errorf("%s: --%s in args: it belongs in a ConfigMap or Secret", where, k)
			}
		}
		if _, ok := w.args.get("etcd-endpoints"); !ok {
			t.Errorf("%s: no etcd endpoints from its ConfigMaps", where)
		}
		refsSecret := map[string]bool{}
		for _, ef := range w.c.EnvFrom {
			if ef.SecretRef != nil {
				refsSecret[ef.SecretRef.Name] = true
			}
		}
		if !refsSecret["imgate-tokens"] {
			t.Errorf("%s: does not take Secret imgate-tokens (the token keys both binaries must share)", where)
		}

		// Probes on a declared port that is the ops HTTP listener.
		// The dispatcher serves /readyz and /healthz on both of its
		// listeners; the kit probes the public one.
		const httpFlag = "http-addr"
		addr, ok := argOf(t, w, httpFlag)
		if !ok {
			t.Fatalf("%s: --%s not in args", where, httpFlag)
		}
		for name, p := range map[string]*corev1.Probe{"readiness": w.c.ReadinessProbe, "liveness": w.c.LivenessProbe} {
			if p == nil || p.HTTPGet == nil {
				t.Errorf("%s: no HTTP %s probe", where, name)
				continue
			}
			want := map[string]string{"readiness": "/readyz", "liveness": "/healthz"}[name]
			if p.HTTPGet.Path != want {
				t.Errorf("%s: %s probe on %s, want %s", where, name, p.HTTPGet.Path, want)
			}
			cp, ok := containerPort(w.c, p.HTTPGet.Port.String())
			if p.HTTPGet.Port.IntVal != 0 {
				ok, cp.ContainerPort = true, p.HTTPGet.Port.IntVal
			}
			if !ok || cp.ContainerPort != port(t, where, addr) {
				t.Errorf("%s: %s probe on port %s, the ops HTTP listens on %s", where, name, p.HTTPGet.Port.String(), addr)
			}
		}
		// hostNetwork: the ports are the host's, and so must the hostPorts be.
		for _, p := range w.c.Ports {
			if spec.HostNetwork && p.HostPort != 0 && p.HostPort != p.ContainerPort {
				t.Errorf("%s: port %s: hostPort %d ≠ containerPort %d under hostNetwork", where, p.Name, p.HostPort, p.ContainerPort)
			}
		}
		if spec.TerminationGracePeriodSeconds == nil {
			t.Fatalf("%s: no terminationGracePeriodSeconds", where)
		}
		grace := time.Duration(*spec.TerminationGracePeriodSeconds) * time.Second
		var preStop time.Duration
		if l := w.c.Lifecycle; l != nil && l.PreStop != nil {
			if l.PreStop.Sleep == nil {
				t.Errorf("%s: preStop other than sleep: the image has no shell", where)
			} else {
				preStop = time.Duration(l.PreStop.Sleep.Seconds) * time.Second
			}
		}

		switch w.bin {
		case nodeBin:
			bound := preStop + nodeStopBound(t, where, parseArgs(t, where, w.c.Args))
			if grace <= bound {
				t.Errorf("%s: terminationGracePeriodSeconds %v, but the node may take %v to stop (preStop + --drain-timeout + %v)", where, grace, bound, nodeStopAfterDrain)
			}
			// Stable ids: the pod's name is the node's --id.
			if id, _ := argOf(t, w, "id"); id != "$(POD_NAME)" {
				t.Errorf("%s: --id %q, want $(POD_NAME) (the StatefulSet's stable pod name)", where, id)
			}
			for _, e := range w.c.Env {
				if e.Name == "POD_NAME" && (e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != "metadata.name") {
					t.Errorf("%s: POD_NAME is not the downward API's metadata.name", where)
				}
			}
			// The client port declared, and what the node advertises.
			for flag, name := range map[string]string{"client-addr": "client", "grpc-addr": "grpc", "http-addr": "http"} {
				v, ok := argOf(t, w, flag)
				cp, declared := containerPort(w.c, name)
				if !ok || !declared || cp.ContainerPort != port(t, where, v) {
					t.Errorf("%s: --%s %q and containerPort %s %d do not match", where, flag, v, name, cp.ContainerPort)
				}
			}
			if adv, ok := argOf(t, w, "client-advertise"); !ok || port(t, where, adv) != port(t, where, must(argOf(t, w, "client-addr"))) {
				t.Errorf("%s: --client-advertise %q: clients must be sent to the client port", where, adv)
			}
			// One node per host: the ports are the host's.
			if spec.HostNetwork && (spec.Affinity == nil || spec.Affinity.PodAntiAffinity == nil ||
				len(spec.Affinity.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution) == 0) {
				t.Errorf("%s: hostNetwork without a required pod anti-affinity: two nodes on a host would fight for the ports", where)
			}
		case dispatcherBin:
			st, ok := argOf(t, w, "shutdown-timeout")
			if !ok {
				t.Fatalf("%s: --shutdown-timeout not in args", where)
			}
			if d := preStop + duration(t, where, st); grace <= d {
				t.Errorf("%s: terminationGracePeriodSeconds %v ≤ preStop + --shutdown-timeout %v", where, grace, d)
			}
			for flag, name := range map[string]string{"http-addr": "http", "admin-addr": "admin"} {
				v, ok := argOf(t, w, flag)
				cp, declared := containerPort(w.c, name)
				if !ok || !declared || cp.ContainerPort != port(t, where, v) {
					t.Errorf("%s: --%s %q and containerPort %s %d do not match", where, flag, v, name, cp.ContainerPort)
				}
			}
			if w.c.Resources.Requests.Cpu().IsZero() {
				t.Errorf("%s: no CPU request: the HPA's utilization is relative to it", where)
			}
		}
	}
	node, disp := byBin[nodeBin], byBin[dispatcherBin]
	if node.c == nil || disp.c == nil {
		t.Fatalf("want a workload for each binary, have %v", sortedKeys(byBin))
	}
	// The hints the dispatcher gives clients are the timeouts the nodes
	// enforce.
	for _, f := range []string{"heartbeat-interval", "idle-timeout"} {
		a, _ := node.args.get(f)
		b, _ := disp.args.get(f)
		if a != b {
			t.Errorf("--%s: nodes %q, dispatcher %q: they must agree", f, a, b)
		}
	}

	// Services select pods of the kit and target their declared ports.
	for n, s := range m.services {
		var target *workload
		for i := range ws {
			if labelsMatch(s.Spec.Selector, ws[i].pod.Labels) {
				target = &ws[i]
			}
		}
		if target == nil {
			t.Errorf("Service %s selects no pod of the kit (%v)", n, s.Spec.Selector)
			continue
		}
		for _, p := range s.Spec.Ports {
			if p.TargetPort.IntVal == 0 {
				if _, ok := containerPort(target.c, p.TargetPort.StrVal); !ok {
					t.Errorf("Service %s: targetPort %s is not a port of %s %s", n, p.TargetPort.StrVal, target.kind, target.name)
				}
			}
		}
	}
	if _, ok := m.services[disp.name]; !ok {
		t.Errorf("no Service %s for the dispatcher", disp.name)
	}
	for n, s := range m.statefulSets {
		svc, ok := m.services[s.Spec.ServiceName]
		if !ok || svc.Spec.ClusterIP != corev1.ClusterIPNone {
			t.Errorf("StatefulSet %s: serviceName %s is not a headless Service of the kit", n, s.Spec.ServiceName)
		}
		if !labelsMatch(s.Spec.Selector.MatchLabels, s.Spec.Template.Labels) {
			t.Errorf("StatefulSet %s: selector does not match its pods", n)
		}
	}
	for n, d := range m.deployments {
		if !labelsMatch(d.Spec.Selector.MatchLabels, d.Spec.Template.Labels) {
			t.Errorf("Deployment %s: selector does not match its pods", n)
		}
	}

	// The HPA scales the dispatcher, which leaves the count to it.
	scaled := false
	for n, h := range m.hpas {
		d, ok := m.deployments[h.Spec.ScaleTargetRef.Name]
		if h.Spec.ScaleTargetRef.Kind != "Deployment" || !ok {
			t.Errorf("HPA %s targets %s %s, not a Deployment of the kit", n, h.Spec.ScaleTargetRef.Kind, h.Spec.ScaleTargetRef.Name)
			continue
		}
		scaled = true
		if d.Spec.Replicas != nil {
			t.Errorf("Deployment %s sets replicas: every apply would undo the HPA %s", d.Name, n)
		}
		if h.Spec.MinReplicas == nil || *h.Spec.MinReplicas < 2 {
			t.Errorf("HPA %s: minReplicas below 2: a restart would leave no dispatcher", n)
		}
	}
	if !scaled {
		t.Error("no HorizontalPodAutoscaler for the dispatcher")
	}
	// A PodDisruptionBudget covers the nodes.
	covered := false
	for _, p := range m.pdbs {
		if labelsMatch(p.Spec.Selector.MatchLabels, node.pod.Labels) {
			covered = true
			if p.Spec.MaxUnavailable == nil || p.Spec.MaxUnavailable.IntValue() != 1 {
				t.Errorf("PodDisruptionBudget %s: maxUnavailable %v: evict one node at a time", p.Name, p.Spec.MaxUnavailable)
			}
		}
	}
	if !covered {
		t.Error("no PodDisruptionBudget selects the nodes")
	}
}

// kustomize renders the kit as kubectl apply -k would (when kubectl is
// installed; it is not a Debian package this project installs).
func TestKustomizeBuild(t *testing.T) {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Skip("kubectl not installed")
	}
	out, err := exec.Command(kubectl, "kustomize", k8sDir).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl kustomize: %v\n%s", err, out)
	}
	for _, want := range []string{"kind: StatefulSet", "kind: HorizontalPodAutoscaler", "namespace: imgate", "image: imgate:"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("kubectl kustomize output has no %q", want)
		}
	}
}
