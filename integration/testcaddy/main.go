// Command testcaddy is Caddy with write_guard, built by the tests that need
// several Caddy processes at once.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"
	_ "github.com/writeguard/caddy-writeguard"
)

func main() {
	caddycmd.Main()
}
