//go:build !race

package lockmgr

const raceDetector = false
