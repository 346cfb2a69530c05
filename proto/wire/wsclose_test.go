package wire

import (
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/imgate/imgate/proto/wirepb"
)

// Every Error code and Kick reason has a close code that reads back to it,
// and docs/protocol.md §9.1 names each of them.
func TestCloseCodesTable(t *testing.T) {
	doc, err := os.ReadFile("../../docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	i := strings.Index(string(doc), "### 9.1 WebSocket close codes")
	if i < 0 {
		t.Fatal("protocol.md has no §9.1")
	}
	table := string(doc[i:])
	for v := range wirepb.ErrorCode_name {
		code := wirepb.ErrorCode(v)
		cc, _ := CloseForError(code)
		if back, _, ok := CloseCause(cc); !ok || back != code {
			t.Errorf("%v: close %d reads back as %v", code, cc, back)
		}
	}
	// The codes a fatal Error may carry (§9).
	for _, code := range []wirepb.ErrorCode{1, 3, 5, 6, 10, 11, 12, 13, 14, 23, 30, 31, 32, 33} {
		cc, reason := CloseForError(code)
		if back, _, ok := CloseCause(cc); !ok || back != code {
			t.Errorf("%v: close %d reads back as %v", code, cc, back)
		}
		if !strings.Contains(table, strconv.Itoa(int(cc))+" `"+reason+"`") {
			t.Errorf("§9.1 does not list %d %s", cc, reason)
		}
	}
	if !strings.Contains(table, "| 1009 | `FRAME_TOO_LARGE` |") {
		t.Error("§9.1 does not list 1009")
	}
	for v := range wirepb.KickReason_name {
		r := wirepb.KickReason(v)
		cc, reason := CloseForKick(r)
		if _, back, ok := CloseCause(cc); !ok || back != r {
			t.Errorf("%v: close %d reads back as %v", r, cc, back)
		}
		if !strings.Contains(table, strconv.Itoa(int(cc))+" `"+reason+"`") {
			t.Errorf("§9.1 does not list %d %s", cc, reason)
		}
	}
	for _, c := range []struct {
		code wirepb.ErrorCode
		want uint16
	}{
		{wirepb.ErrorCode_ERROR_CODE_LOGIN_TIMEOUT, 4005},
		{wirepb.ErrorCode_ERROR_CODE_IDLE_TIMEOUT, 4006},
		{wirepb.ErrorCode_ERROR_CODE_SHUTTING_DOWN, 4031},
		{wirepb.ErrorCode_ERROR_CODE_OVERLOADED, 4032},
		{wirepb.ErrorCode_ERROR_CODE_FRAME_TOO_LARGE, 1009},
	} {
		if got, _ := CloseForError(c.code); got != c.want {
			t.Errorf("%v: %d, want %d", c.code, got, c.want)
		}
	}
	if _, _, ok := CloseCause(CloseNormal); ok {
		t.Error("1000 has a cause")
	}
}
