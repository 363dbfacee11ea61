package integration

import (
	"net/textproto"
	"strings"
)

// fieldTokens lists the comma-separated elements of every line of a list
// field, such as Trailer, as they came.
func fieldTokens(hdr textproto.MIMEHeader, field string) []string {
	var tokens []string
	for _, line := range hdr.Values(field) {
		for _, tok := range strings.Split(line, ",") {
			if tok = strings.TrimSpace(tok); tok != "" {
				tokens = append(tokens, tok)
			}
		}
	}
	return tokens
}

func countFold(list []string, s string) int {
	n := 0
	for _, v := range list {
		if strings.EqualFold(v, s) {
			n++
		}
	}
	return n
}
