package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// result is one scenario's outcome, printed in the table and written with
// --json.
type result struct {
	Name       string         `json:"name"`
	What       string         `json:"what"`
	Pass       bool           `json:"pass"`
	Counts     Counts         `json:"counts"`
	Problems   []string       `json:"problems,omitempty"`
	Notes      []string       `json:"notes,omitempty"`
	Windows    []windowJSON   `json:"windows,omitempty"`
	Clients    int            `json:"clients"`
	Rate       int            `json:"rate"`
	Skipped    int64          `json:"skipped"`
	Events     map[string]int `json:"events,omitempty"`
	Seconds    float64        `json:"seconds"`
	RunDir     string         `json:"run_dir"`
	Memory     []memJSON      `json:"memory,omitempty"`
	SoakFaults []soakFault    `json:"soak_faults,omitempty"`
}

type windowJSON struct {
	Name    string `json:"name"`
	FaultMS int64  `json:"fault_ms"`
	HealMS  int64  `json:"heal_ms"`
}

func windowsJSON(ws []Window) []windowJSON {
	out := make([]windowJSON, len(ws))
	for i, w := range ws {
		out[i] = windowJSON{Name: w.Name, FaultMS: w.Fault.Milliseconds(), HealMS: w.Heal.Milliseconds()}
	}
	return out
}

// memJSON is one node's memory over a soak (VmRSS, KiB).
type memJSON struct {
	Node        string `json:"node"`
	AfterWarmup int64  `json:"after_warmup_kib"`
	Max         int64  `json:"max_kib"`
	End         int64  `json:"end_kib"`
	Restarts    int    `json:"restarts"`
	Samples     int    `json:"samples"`
}

// soakFault is one fault of a soak and the Sends started from it to the
// next fault.
type soakFault struct {
	Name     string   `json:"name"`
	FaultMS  int64    `json:"fault_ms"`
	HealMS   int64    `json:"heal_ms"`
	Counts   Counts   `json:"counts"`
	Problems []string `json:"problems,omitempty"`
}

// report is what --json writes.
type report struct {
	Mode      string    `json:"mode"`
	Started   time.Time `json:"started"`
	Seconds   float64   `json:"seconds"`
	Pass      bool      `json:"pass"`
	Scenarios []result  `json:"scenarios"`
}

func recoveryCell(ms []int64) string {
	if len(ms) == 0 {
		return "-"
	}
	if len(ms) > 3 { // a soak: the per-fault lines below have each one
		never := 0
		for _, v := range ms {
			if v < 0 {
				never++
			}
		}
		return fmt.Sprintf("%d/%d never", never, len(ms))
	}
	cells := make([]string, len(ms))
	for i, v := range ms {
		if v < 0 {
			cells[i] = "never"
		} else {
			cells[i] = fmt.Sprintf("%.1fs", float64(v)/1000)
		}
	}
	return strings.Join(cells, ",")
}

// printTable writes one row per scenario, then each scenario's details.
func printTable(w io.Writer, results []result) {
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\tsent\tdeliv\tpartial\tfailed\toffline\tstored\tunknown\tno_ans\t|\tlost\tdup\tfalse_off\toff>h+5\treord\t|\tfailed b/d/h/a\toffline b/d/h/a\trecovery\t|\tverdict\t")
	for _, r := range results {
		c := r.Counts
		v := "PASS"
		if !r.Pass {
			v = "FAIL"
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t|\t%d\t%d\t%d\t%d\t%d\t|\t%s\t%s\t%s\t|\t%s\t\n",
			r.Name, c.Sent, c.Delivered, c.Partial, c.Failed, c.Offline, c.Stored, c.Unknown, c.NoAnswer,
			c.Lost, c.Duplicates, c.FalseOffline, c.OfflineAfterHeal, c.Reordered,
			phaseCells(c.FailedByPhase), phaseCells(c.OfflineByPhase), recoveryCell(c.RecoveryMS), v)
	}
	tw.Flush()
	fmt.Fprintln(w, "  phases b/d/h/a: before the fault / during / heal→heal+5s / after heal+5s;"+
		" recovery: heal → first 1 s in which every Send was DELIVERED")
	for _, r := range results {
		fmt.Fprintf(w, "\n%s (%.0f s, %d clients at %d msg/s): %s\n", r.Name, r.Seconds, r.Clients, r.Rate, r.What)
		if r.Counts.Failed > 0 {
			fmt.Fprintf(w, "  FAILED by reason: %s\n", formatMap(r.Counts.FailedByReason))
		}
		if r.Counts.NoAnswer > 0 {
			fmt.Fprintf(w, "  no answer by phase b/d/h/a: %s\n", phaseCells(r.Counts.NoAnswerByPhase))
		}
		if r.Counts.Unsent > 0 || r.Skipped > 0 {
			fmt.Fprintf(w, "  not sent: %d (client could not connect), %d skipped by the pacer\n", r.Counts.Unsent, r.Skipped)
		}
		if c := r.Counts; c.FalseOffline > 0 {
			fmt.Fprintf(w, "  false OFFLINE: %d received by the app, %d to recipients connected throughout\n", c.FalseOfflineReceived, c.FalseOfflineConnected)
		}
		for _, wd := range r.Windows {
			fmt.Fprintf(w, "  fault %q at %.1f s, healed at %.1f s\n", wd.Name, float64(wd.FaultMS)/1000, float64(wd.HealMS)/1000)
		}
		if len(r.Events) > 0 {
			fmt.Fprintf(w, "  client events: %s\n", formatMap(r.Events))
		}
		for _, n := range r.Notes {
			fmt.Fprintf(w, "  note: %s\n", n)
		}
		for _, p := range r.Problems {
			fmt.Fprintf(w, "  PROBLEM: %s\n", p)
		}
		for _, m := range r.Memory {
			fmt.Fprintf(w, "  memory %s: after warm-up %d KiB, max %d KiB, end %d KiB (%d samples, %d restarts)\n",
				m.Node, m.AfterWarmup, m.Max, m.End, m.Samples, m.Restarts)
		}
		for _, f := range r.SoakFaults {
			c := f.Counts
			v := "ok"
			if len(f.Problems) > 0 {
				v = strings.Join(f.Problems, "; ")
			}
			fmt.Fprintf(w, "  %7.1fs %-12s sent %d deliv %d fail %d offl %d unkn %d noans %d lost %d dup %d false_off %d recovery %s: %s\n",
				float64(f.FaultMS)/1000, f.Name, c.Sent, c.Delivered, c.Failed, c.Offline, c.Unknown, c.NoAnswer, c.Lost, c.Duplicates, c.FalseOffline, recoveryCell(c.RecoveryMS), v)
		}
	}
}
