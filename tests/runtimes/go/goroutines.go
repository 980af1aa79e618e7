// A cgo program whose goroutines recurse to different depths (so their stacks grow and
// move while probes are live) and call a leaf at every level. It prints its own counts:
// the calls of main.leaf and of main.recurse, the sum of every result of main.recurse, and
// the sum of the goroutines' results.
// Arguments: goroutines (200), rounds per goroutine (20), and a file whose existence ends
// the rounds early (none).
package main

/*
#include <stdlib.h>
static int hp_go_cgo_marker(void) { return 42; }
*/
import "C"

import (
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
)

var leafCalls, recurseCalls, recurseResults int64

//go:noinline
func leaf(x int64) int64 {
	atomic.AddInt64(&leafCalls, 1)
	return x*3 + 1
}

// recurse keeps a frame of 256 bytes per level, so deep goroutines copy their stacks
// several times (2 KiB first, doubled on each growth).
//
//go:noinline
func recurse(depth, x int64) int64 {
	atomic.AddInt64(&recurseCalls, 1)
	var pad [32]int64
	pad[depth%32] = leaf(x)
	r := pad[0]
	if depth != 0 {
		r = recurse(depth-1, x+1) + pad[depth%32]
	}
	atomic.AddInt64(&recurseResults, r)
	return r
}

func main() {
	goroutines, rounds := 200, 20
	if len(os.Args) > 1 {
		goroutines, _ = strconv.Atoi(os.Args[1])
	}
	if len(os.Args) > 2 {
		rounds, _ = strconv.Atoi(os.Args[2])
	}
	// With a third argument, rounds go on (up to the count) until that file exists.
	stop := ""
	if len(os.Args) > 3 {
		stop = os.Args[3]
	}
	var stopped int32
	var wg sync.WaitGroup
	var sum int64
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for r := 0; r < rounds && atomic.LoadInt32(&stopped) == 0; r++ {
				atomic.AddInt64(&sum, recurse(int64((g*7+r)%100), int64(g)))
				if stop != "" && g == 0 && r%16 == 0 {
					if _, err := os.Stat(stop); err == nil {
						atomic.StoreInt32(&stopped, 1)
					}
				}
			}
		}(g)
	}
	wg.Wait()
	fmt.Printf("cgo %d leaf %d recurse %d results %d sum %d\n", int(C.hp_go_cgo_marker()),
		leafCalls, recurseCalls, recurseResults, sum)
	// Through libc's exit(), whose atexit handlers print the tracer's maps (a Go return
	// from main leaves by the raw exit_group system call).
	C.exit(0)
}
