//go:build !unix

package spool

// openNoFollow is a no-op where O_NOFOLLOW does not exist; claim already
// skips directory entries that are not regular files.
const openNoFollow = 0
