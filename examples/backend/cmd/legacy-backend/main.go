// Command legacy-backend serves the naive last-writer-wins store on a
// loopback address, for the demo.
package main

import (
	"flag"
	"log"
	"net/http"
	"time"

	"github.com/writeguard/caddy-writeguard/examples/backend"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:9001", "address to serve on")
	etags := flag.String("etags", "strong", "strong, weak, none, mtime (\"<seconds>-<size>\", as file servers send) or constant (one tag per path, whatever it holds)")
	delay := flag.Duration("write-delay", 0, "how long each write takes")
	flag.Parse()

	store := backend.New()
	store.WriteDelay = *delay
	switch *etags {
	case "strong":
	case "weak":
		store.ETags = backend.WeakETags
	case "none":
		store.ETags = backend.NoETags
	case "mtime":
		store.ETags = backend.MTimeETags
	case "constant":
		store.ETags = backend.ConstantETags
	default:
		log.Fatalf("-etags: %q is not strong, weak, none, mtime or constant", *etags)
	}
	store.Put("/notes/1", []byte(`{"title":"shopping","items":["milk"]}`))

	log.Printf("legacy backend (last writer wins, no preconditions) on http://%s", *listen)
	srv := &http.Server{Addr: *listen, Handler: store, ReadHeaderTimeout: 10 * time.Second}
	log.Fatal(srv.ListenAndServe())
}
