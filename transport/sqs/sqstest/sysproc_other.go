//go:build !linux

package sqstest

import "syscall"

// sysProcAttr is nil where there is no parent-death signal; t.Cleanup
// still kills fauxqs when the test ends normally.
func sysProcAttr() *syscall.SysProcAttr { return nil }
