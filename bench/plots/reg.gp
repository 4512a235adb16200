# reg.gp - registration latency vs region size (bench suite "reg").
# gnuplot -e "csvdir='DIR'" -e "outdir='DIR'" reg.gp
if (!exists("csvdir")) csvdir = "."
if (!exists("outdir")) outdir = "."
f = csvdir."/reg.csv"
if (system("test -s '".f."' && echo y") ne "y") { print "reg.gp: no ".f; exit }
set datafile separator ","
# The rows of one case (a grep: gnuplot draws no line across skipped rows).
rows(c) = "< grep -F ',".c.",' '".f."'"
set terminal pngcairo size 900,540 font ",10"
set output outdir."/reg.png"
set title "uodp\\_umem\\_get latency vs pinned registration (median; bars: min..p99)"
set logscale xy
set logscale x 2
set xtics ("4 KiB" 4096, "64 KiB" 65536, "1 MiB" 2**20, "16 MiB" 2**24, "256 MiB" 2**28, "4 GiB" 2**32, "64 GiB" 2**36, "1 TiB" 2**40)
set format y "%g"
set xlabel "region size (bytes of address space)"
set ylabel "microseconds"
set key top left
set grid
plot rows("umem_get") using 4:7:9:8 with yerrorlines lw 2 title "uodp\\_umem\\_get", \
     rows("umem_get") using 4:12 with linespoints lw 2 \
       title "pinned: mlock + POPULATE\\_WRITE", \
     10 with lines dt 2 lc rgb "red" title "target 10 us"
