//go:build !race

package writeguard

const raceDetector = false
