package wire

import (
	"strings"
	"testing"
)

func TestValidRoom(t *testing.T) {
	for room, want := range map[string]bool{
		"":                       false,
		"general":                true,
		"群聊-42":                  true,
		strings.Repeat("a", 128): true,
		strings.Repeat("a", 129): false,
		"tab\there":              false,
		"nul\x00":                false,
		"\xff\xfe":               false,
		"a/b c":                  true,
	} {
		if got := ValidRoom(room); got != want {
			t.Errorf("ValidRoom(%q) = %v, want %v", room, got, want)
		}
	}
}
