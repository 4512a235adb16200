# inval.gp - invalidation time vs mapped size (bench suite "inval").
if (!exists("csvdir")) csvdir = "."
if (!exists("outdir")) outdir = "."
f = csvdir."/inval.csv"
if (system("test -s '".f."' && echo y") ne "y") { print "inval.gp: no ".f; exit }
set datafile separator ","
# The rows of one case (a grep: gnuplot draws no line across skipped rows).
rows(c) = "< grep -F ',".c.",' '".f."'"
# Times in microseconds whatever the row's unit (us or ms).
us(col) = (strcol(5) eq "ms" ? 1000.0 : 1.0) * column(col)
set terminal pngcairo size 900,540 font ",10"
set output outdir."/inval.png"
set title "uodp\\_invalidate\\_range of mapped memory (median; bars: min..p99)"
set logscale xy
set logscale x 2
set xtics ("4 KiB" 4096, "64 KiB" 65536, "1 MiB" 2**20, "16 MiB" 2**24, "256 MiB" 2**28, "4 GiB" 2**32, "64 GiB" 2**36, "1 TiB" 2**40)
set format y "%g"
set xlabel "bytes mapped and invalidated"
set ylabel "microseconds"
set key top left
set grid
plot rows("invalidate write-mapped") using 4:(us(7)):(us(9)):(us(8)) w yerrorlines lw 2 title "write-mapped", \
     rows("invalidate read-mapped") using 4:(us(7)) w p pt 7 ps 1.5 title "read-mapped", \
     rows("invalidate pinning") using 4:(us(7)) w p pt 9 ps 1.5 title "pinning mode", \
     rows("kernel munmap (yardstick)") using 4:(us(7)) w p pt 5 ps 1.5 title "kernel munmap of the same memory", \
     5000 with lines dt 2 lc rgb "red" title "target 5 ms (1 GiB)"
