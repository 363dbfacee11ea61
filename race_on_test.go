//go:build race

package writeguard

// raceDetector: the race detector slows the handler about tenfold, so
// the heaviest tests do a tenth of their work under it.
const raceDetector = true
