// A cgo program whose goroutines recurse to different depths (so their stacks grow and
// move while probes are live) and call a leaf at every level. It prints its own counts:
// the calls of main.leaf and of main.recurse, the sum of every result of main.recurse, and
// the sum of the goroutines' results.
// Arguments: goroutines (200), rounds per goroutine (20), and a file whose existence ends
// the rounds early (none); with that file, "running" is printed once every goroutine has
// started.
//
// `goroutines spin FILE`: the main goroutine, locked to the process's first thread, fills
// 8 KiB of its stack below its frame with a pattern and spins (no call, no system call)
// until FILE exists; it then prints whether the pattern below its stack pointer is intact
// ("spin stack intact") or where something running on that thread wrote over it. A tool
// that makes a call on that thread while it spins must not use the goroutine's stack.
package main

/*
#include <stdlib.h>
static int hp_go_cgo_marker(void) { return 42; }
*/
import "C"

import (
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
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

func spinMode() bool { return len(os.Args) == 3 && os.Args[1] == "spin" }

func init() {
	if spinMode() {
		runtime.LockOSThread() // in init: the main goroutine stays on the first thread
	}
}

const pattern = 0x5a5a_1234_a5a5_4321

var patternSum uint64

// fillBelow writes the pattern over 8 KiB of stack, below the frame of its caller.
//
//go:noinline
func fillBelow() {
	var a [1024]uint64
	for i := range a {
		a[i] = pattern
	}
	var s uint64
	for i := range a {
		s += a[i]
	}
	patternSum = s
}

// spinThenCheck spins until `stop` is set (a loop without calls: its stack pointer stays
// put), then returns the offset below its own frame of the first word of the pattern
// that changed, or 0.
//
//go:noinline
func spinThenCheck(stop *int32) uintptr {
	var here uint64
	base := uintptr(unsafe.Pointer(&here))
	for atomic.LoadInt32(stop) == 0 {
	}
	// The 1 KiB right below the frame may hold an asynchronous preemption's frame.
	for off := uintptr(1024); off < 6*1024; off += 8 {
		if *(*uint64)(unsafe.Pointer(base - off)) != pattern {
			return off
		}
	}
	return 0
}

func spin(stop string) {
	debug.SetGCPercent(-1) // no collection: the stack is neither shrunk nor moved
	var filled, stopped int32
	go func() {
		for atomic.LoadInt32(&filled) == 0 {
			time.Sleep(time.Millisecond)
		}
		fmt.Println("running")
		for {
			if _, err := os.Stat(stop); err == nil {
				atomic.StoreInt32(&stopped, 1)
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	fillBelow()
	atomic.StoreInt32(&filled, 1)
	if off := spinThenCheck(&stopped); off != 0 {
		fmt.Printf("spin stack written %d bytes below the spinning frame\n", off)
	} else {
		fmt.Println("spin stack intact")
	}
	C.exit(0)
}

func main() {
	if spinMode() {
		spin(os.Args[2])
	}
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
	var wg, started sync.WaitGroup
	var sum int64
	started.Add(goroutines)
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			started.Done()
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
	if stop != "" {
		started.Wait()
		fmt.Println("running")
	}
	wg.Wait()
	fmt.Printf("cgo %d leaf %d recurse %d results %d sum %d\n", int(C.hp_go_cgo_marker()),
		leafCalls, recurseCalls, recurseResults, sum)
	// Through libc's exit(), whose atexit handlers print the tracer's maps (a Go return
	// from main leaves by the raw exit_group system call).
	C.exit(0)
}
