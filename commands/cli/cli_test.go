package cli

import (
	"errors"
	"fmt"
	"testing"
)

func TestExitCode(t *testing.T) {
	tests := []struct {
		err   error
		code  int
		print bool
	}{
		{nil, 0, false},
		{errors.New("boom"), 1, true},
		{UsageErr("bad"), 2, true},
		{fmt.Errorf("wrapped: %w", UsageErr("bad")), 2, true},
		{&ExitError{Code: 126}, 126, false},
		{&ExitError{Code: 3, Err: errors.New("x")}, 3, true},
	}
	for _, tt := range tests {
		code, print := ExitCode(tt.err)
		if code != tt.code || print != tt.print {
			t.Errorf("ExitCode(%v) = %d, %v; want %d, %v", tt.err, code, print, tt.code, tt.print)
		}
	}
}
