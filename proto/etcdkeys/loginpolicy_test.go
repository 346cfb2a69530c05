package etcdkeys

import "testing"

func TestParseLoginPolicy(t *testing.T) {
	for in, want := range map[string]LoginPolicy{
		`{"max_devices":3}`:                  {MaxDevices: 3, Loses: LosesOldest},
		`{"max_devices":1,"loses":"newest"}`: {MaxDevices: 1, Loses: LosesNewest},
		`{"one_per_class":true}`:             {OnePerClass: true, Loses: LosesOldest},
		`{}`:                                 {Loses: LosesOldest},
		`{"max_devices":2,"one_per_class":true} `: {MaxDevices: 2, OnePerClass: true, Loses: LosesOldest},
	} {
		got, err := ParseLoginPolicy([]byte(in))
		if err != nil || got != want {
			t.Errorf("%s: %+v %v", in, got, err)
		}
	}
	for _, bad := range []string{``, `[]`, `{"max_devices":-1}`, `{"max_devices":1001}`, `{"loses":"random"}`, `{"max":1}`, `{} {}`, `{"max_devices":"2"}`} {
		if _, err := ParseLoginPolicy([]byte(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if DeviceClass("phone:1") != "phone" || DeviceClass("web") != "web" || DeviceClass(":x") != "" {
		t.Error("DeviceClass")
	}
}

func FuzzParseLoginPolicy(f *testing.F) {
	f.Add([]byte(`{"max_devices":3,"loses":"newest","one_per_class":true}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ParseLoginPolicy(b)
		if err != nil {
			return
		}
		if p.MaxDevices < 0 || p.MaxDevices > 1000 || (p.Loses != LosesOldest && p.Loses != LosesNewest) {
			t.Fatalf("accepted %+v from %q", p, b)
		}
	})
}
