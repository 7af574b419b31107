//go:build !linux

package spool

import "errors"

type dirWatch struct{ events chan struct{} }

// watchDir is Linux-only; elsewhere Receive polls.
func watchDir(string) (*dirWatch, error) { return nil, errors.New("no inotify") }

func (w *dirWatch) Close() error { return nil }
