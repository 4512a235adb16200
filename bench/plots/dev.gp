# dev.gp - device data path throughput vs memcpy, warm (bench suite "dev"),
# and fault throughput by fault-around size (suite "devfault").
if (!exists("csvdir")) csvdir = "."
if (!exists("outdir")) outdir = "."
f = csvdir."/dev.csv"
if (system("test -s '".f."' && echo y") ne "y") { print "dev.gp: no ".f; exit }
set datafile separator ","
# The rows of one case (a grep: gnuplot draws no line across skipped rows).
rows(c) = "< grep -F ',".c.",' '".f."'"
set terminal pngcairo size 900,540 font ",10"
set output outdir."/dev.png"
set title "Device data path, warm (pages in the device page table): GB/s from the median"
set logscale x 2
set xtics ("64 B" 64, "4 KiB" 4096, "64 KiB" 65536, "1 MiB" 2**20, "16 MiB" 2**24)
set logscale y
set format y "%g"
set xlabel "bytes per operation"
set ylabel "GB/s"
set key top left
set grid
gbs(col) = column(4) / (column(col) * 1000.0)
plot rows("warm read") using 4:(gbs(12)) w lp lw 2 dt 2 title "memcpy", \
     rows("warm read") using 4:(gbs(7)) w lp lw 2 title "read (process\\_vm)", \
     rows("warm read FAST_COPY") using 4:(gbs(7)) w lp lw 2 title "read FAST\\_COPY", \
     rows("warm write") using 4:(gbs(7)) w lp lw 2 title "write (process\\_vm)", \
     rows("warm write FAST_COPY") using 4:(gbs(7)) w lp lw 2 title "write FAST\\_COPY", \
     rows("warm copy FAST_COPY") using 4:(gbs(7)) w lp lw 2 title "copy FAST\\_COPY"
g = csvdir."/devfault.csv"
if (system("test -s '".g."' && echo y") ne "y") { print "dev.gp: no ".g; exit }
set output outdir."/devfault.png"
set title "Device touching fresh memory: speed relative to populate + CPU first touch"
unset logscale y
set yrange [0:*]
set xtics ("4 KiB" 4096, "64 KiB" 65536, "256 KiB" 2**18, "2 MiB" 2**21)
set xlabel "fault-around (bytes mapped per device fault)"
set ylabel "ratio (1 = the limit)"
set key bottom right
plot "< grep -F ',device write-touch,' '".g."'" using 4:16 w lp lw 2 pt 7 title "write", \
     "< grep -F ',device read-touch,' '".g."'" using 4:16 w lp lw 2 pt 5 title "read", \
     0.8 with lines dt 2 lc rgb "red" title "target 0.80"
