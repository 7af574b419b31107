package sqstest

import "syscall"

// sysProcAttr has the kernel kill fauxqs when the test binary dies, however
// it dies, so no server outlives its test.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
