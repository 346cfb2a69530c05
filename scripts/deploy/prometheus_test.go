package deploy

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

const (
	rulesFile     = "prometheus/imgate-alerts.yml"
	rulesTestFile = "prometheus/imgate-alerts.test.yml"
	dashboardFile = "grafana/imgate.json"
)

// mainAlerts are the alerts the kit must have, each with a promtool unit
// test and a runbook entry in docs/operations.md.
var mainAlerts = []string{
	"ImgateNodeDown",
	"ImgateForwardStreamDown",
	"ImgatePullFailures",
	"ImgateNodeEjected",
	"ImgateSendAckFailureRatio",
	"ImgateNoEligibleNode",
	"ImgateEtcdUnreachable",
	"ImgateNodeNotRegistered",
}

type rule struct {
	Alert       string            `json:"alert"`
	Record      string            `json:"record"`
	Expr        string            `json:"expr"`
	For         string            `json:"for"`
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
}

func readRules(t *testing.T) []rule {
	t.Helper()
	b, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []rule `json:"rules"`
		} `json:"groups"`
	}
	if err := yaml.UnmarshalStrict(b, &f); err != nil {
		t.Fatalf("%s: %v", rulesFile, err)
	}
	var out []rule
	for _, g := range f.Groups {
		out = append(out, g.Rules...)
	}
	return out
}

// ruleTestSeries are the series names the promtool unit tests feed in: they
// must be real metrics too, or the tests prove nothing.
func ruleTestSeries(t *testing.T) (series []string, tested map[string]bool) {
	t.Helper()
	b, err := os.ReadFile(rulesTestFile)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Tests []struct {
			InputSeries []struct {
				Series string `json:"series"`
			} `json:"input_series"`
			AlertRuleTest []struct {
				Alertname string `json:"alertname"`
				ExpAlerts []any  `json:"exp_alerts"`
			} `json:"alert_rule_test"`
		} `json:"tests"`
	}
	if err := yaml.Unmarshal(b, &f); err != nil {
		t.Fatalf("%s: %v", rulesTestFile, err)
	}
	tested = map[string]bool{}
	for _, tc := range f.Tests {
		for _, s := range tc.InputSeries {
			name, _, _ := strings.Cut(s.Series, "{")
			series = append(series, name)
		}
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				tested[a.Alertname] = true
			}
		}
	}
	return series, tested
}

// The alert rules: the main alerts present, each with a severity, a
// summary and a description, a promtool test that makes it fire, and a
// runbook entry.
func TestAlertRules(t *testing.T) {
	rules := readRules(t)
	_, tested := ruleTestSeries(t)
	docs, err := os.ReadFile("../../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]rule{}
	for _, r := range rules {
		if r.Alert == "" {
			continue
		}
		if _, dup := byName[r.Alert]; dup {
			t.Errorf("alert %s defined twice", r.Alert)
		}
		byName[r.Alert] = r
		if s := r.Labels["severity"]; s != "critical" && s != "warning" {
			t.Errorf("%s: severity %q, want critical or warning", r.Alert, s)
		}
		if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
			t.Errorf("%s: needs a summary and a description", r.Alert)
		}
		if !strings.Contains(string(docs), r.Alert) {
			t.Errorf("%s: not in docs/operations.md (what it means, what to do)", r.Alert)
		}
	}
	for _, a := range mainAlerts {
		if _, ok := byName[a]; !ok {
			t.Errorf("alert %s missing", a)
		}
		if !tested[a] {
			t.Errorf("alert %s: no promtool unit test makes it fire (%s)", a, rulesTestFile)
		}
	}
}

type dashboard struct {
	Title      string `json:"title"`
	UID        string `json:"uid"`
	Templating struct {
		List []struct {
			Name string `json:"name"`
			Type string `json:"type"`
		} `json:"list"`
	} `json:"templating"`
	Panels []panel `json:"panels"`
}

type panel struct {
	ID         int                      `json:"id"`
	Type       string                   `json:"type"`
	Title      string                   `json:"title"`
	Datasource map[string]any           `json:"datasource"`
	GridPos    struct{ H, W, X, Y int } `json:"gridPos"`
	Targets    []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
	Panels []panel `json:"panels"`
}

func readDashboard(t *testing.T) dashboard {
	t.Helper()
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	return d
}

// queries are the dashboard's PromQL expressions, by panel title.
func (d dashboard) queries() map[string][]string {
	out := map[string][]string{}
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			for _, tg := range p.Targets {
				out[p.Title] = append(out[p.Title], tg.Expr)
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return out
}

// The dashboard: unique panel ids, every query panel on the datasource
// variable with queries, every variable it uses defined, inside the grid.
func TestDashboard(t *testing.T) {
	d := readDashboard(t)
	if d.UID == "" || d.Title == "" {
		t.Error("dashboard needs a uid and a title (provisioning and links use them)")
	}
	vars := map[string]bool{"__rate_interval": true, "__interval": true, "__range": true}
	for _, v := range d.Templating.List {
		vars[v.Name] = true
	}
	ids := map[int]bool{}
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			if ids[p.ID] || p.ID == 0 {
				t.Errorf("panel %q: id %d not unique", p.Title, p.ID)
			}
			ids[p.ID] = true
			if p.GridPos.X < 0 || p.GridPos.W <= 0 || p.GridPos.X+p.GridPos.W > 24 {
				t.Errorf("panel %q: outside the 24-column grid (%+v)", p.Title, p.GridPos)
			}
			if p.Type != "row" {
				if p.Datasource["uid"] != "${datasource}" {
					t.Errorf("panel %q: datasource %v, want the ${datasource} variable", p.Title, p.Datasource)
				}
				if len(p.Targets) == 0 {
					t.Errorf("panel %q: no query", p.Title)
				}
				for _, tg := range p.Targets {
					if strings.TrimSpace(tg.Expr) == "" {
						t.Errorf("panel %q: empty query %s", p.Title, tg.RefID)
					}
					for _, m := range regexp.MustCompile(`\$\{?([A-Za-z_][A-Za-z0-9_]*)`).FindAllStringSubmatch(tg.Expr, -1) {
						if !vars[m[1]] {
							t.Errorf("panel %q: query uses $%s, not a dashboard variable", p.Title, m[1])
						}
					}
				}
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
}

// dashboardPromQL is a dashboard query with its Grafana variables filled in
// as Grafana would before sending it to Prometheus.
func dashboardPromQL(expr string) string {
	return strings.NewReplacer("$__rate_interval", "1m", "$__interval", "15s", "$__range", "1h",
		"$node_job", "imgate-node", "$dispatcher_job", "imgate-dispatcher").Replace(expr)
}

// Every dashboard query is valid PromQL: promtool checks them as the
// expressions of recording rules.
func TestDashboardQueriesParse(t *testing.T) {
	promtool := tool(t, "promtool")
	type rec struct {
		Record string `json:"record"`
		Expr   string `json:"expr"`
	}
	var rs []rec
	where := map[string]string{}
	q := readDashboard(t).queries()
	for _, title := range sortedKeys(q) {
		for i, e := range q[title] {
			name := fmt.Sprintf("dashboard:q%d", len(rs))
			rs = append(rs, rec{name, dashboardPromQL(e)})
			where[name] = fmt.Sprintf("%q query %d", title, i+1)
		}
	}
	b, err := yaml.Marshal(map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": rs}}})
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "dashboard-queries.yml")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(promtool, "check", "rules", p).CombinedOutput(); err != nil {
		t.Errorf("promtool check rules on the dashboard's queries: %v\n%s\n(queries: %v)", err, out, where)
	}
}

// metricRef finds metric names in PromQL: imgate's own, the Go and process
// collectors' that both binaries serve, and up.
var metricRef = regexp.MustCompile(`\b(imgate_[a-z0-9_]+|process_[a-z0-9_]+|go_[a-z0-9_]+)\b|\bup\{`)

// metricNames are the metric names an expression reads (without up, which
// Prometheus makes itself).
func metricNames(expr string) []string {
	var out []string
	// Label values and legends in quotes are not metric names.
	unquoted := regexp.MustCompile(`"(?:[^"\\]|\\.)*"`).ReplaceAllString(expr, `""`)
	for _, m := range metricRef.FindAllStringSubmatch(unquoted, -1) {
		if m[1] != "" {
			out = append(out, m[1])
		}
	}
	return out
}

// kitMetrics are the metric names the alerts, their unit tests and the
// dashboard read, each with where.
func kitMetrics(t *testing.T) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for _, r := range readRules(t) {
		for _, n := range metricNames(r.Expr) {
			out[n] = append(out[n], "alert "+r.Alert)
		}
	}
	series, _ := ruleTestSeries(t)
	for _, s := range series {
		if s != "up" {
			out[s] = append(out[s], rulesTestFile)
		}
	}
	q := readDashboard(t).queries()
	for _, title := range sortedKeys(q) {
		for _, e := range q[title] {
			for _, n := range metricNames(e) {
				out[n] = append(out[n], fmt.Sprintf("panel %q", title))
			}
		}
	}
	return out
}

func TestMetricNames(t *testing.T) {
	got := metricNames(`sum by (instance) (rate(imgate_node_send_outcomes_total{job="imgate-node",outcome="failed"}[5m])) / up{job="x"} + histogram_quantile(0.9, rate(imgate_dispatcher_endpoint_duration_seconds_bucket[1m])) > process_max_fds`)
	want := []string{"imgate_node_send_outcomes_total", "imgate_dispatcher_endpoint_duration_seconds_bucket", "process_max_fds"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("metricNames: %v, want %v", got, want)
	}
}
