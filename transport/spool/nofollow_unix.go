//go:build unix

package spool

import "syscall"

// openNoFollow keeps a message name that is a symlink from being followed
// out of the spool.
const openNoFollow = syscall.O_NOFOLLOW
