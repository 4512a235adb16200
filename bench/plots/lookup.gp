# lookup.gp - overlap query cost vs number of regions (bench suite "lookup").
if (!exists("csvdir")) csvdir = "."
if (!exists("outdir")) outdir = "."
f = csvdir."/lookup.csv"
if (system("test -s '".f."' && echo y") ne "y") { print "lookup.gp: no ".f; exit }
set datafile separator ","
# The rows of one case (a grep: gnuplot draws no line across skipped rows).
rows(c) = "< grep -F ',".c.",' '".f."'"
set terminal pngcairo size 900,540 font ",10"
set output outdir."/lookup.png"
set title "Invalidation / overlap query with n regions inserted in random order (median ns per query)"
set logscale xy
set format y "%g"
set xlabel "regions registered"
set ylabel "nanoseconds"
set key top left
set grid
plot rows("invalidate no region hit") using 4:7 w lp lw 2 title "uodp\\_invalidate\\_range, no region hit", \
     rows("invalidate 1 region hit") using 4:7 w lp lw 2 title "uodp\\_invalidate\\_range, 1 region hit", \
     rows("itree query miss") using 4:7 w lp lw 2 title "0.1 interval tree (itree) alone", \
     rows("itree query miss") using 4:12 w lp lw 2 title "linear scan (baseline)", \
     1000 with lines dt 2 lc rgb "red" title "target 1 us at 10^6"
