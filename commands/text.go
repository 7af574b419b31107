package commands

// abbreviate shortens what an error quotes of an argument.
func abbreviate(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}
