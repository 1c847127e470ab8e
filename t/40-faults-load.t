#!/usr/bin/perl
#
# Faults under load.  While wrk drives valid batch PATCHes through nginx
# (2 workers), Redis is killed (SIGKILL) and started again, hung (SIGSTOP)
# and released, nginx is reloaded three times, and clients abort mid-body
# and mid-wait all along.  Every response nginx sent is counted from its
# access log ($status $dify_status $dify_status_key ...), and:
#
#   - every (status, $dify_status) is one the location's fallback allows:
#       allow: 200 passed | 200 fallback_allowed | 429 limited
#       deny:  200 passed | 429 limited | 503 fallback_denied
#       local: 200 passed | 200 fallback_passed | 429 limited
#              | 429 fallback_limited
#     (429 only for the keys over their limit; 499 only for the clients
#     that gave up, and for wrk's own connections when it is stopped;
#     400 only for bodies cut short); never 500, 502 or 504
#   - requests are decided by a fallback only while Redis is down or hung
#     (and until the workers are back on it)
#   - a request the module answered never reached the upstream, every 200
#     came from it, and the upstream saw no more than that
#   - the keys over their limit got no more than GCRA allows
#   - no worker crashed ("exited on signal"), no [alert]/[crit]/[emerg],
#     worker pids changed only through the reloads, wrk saw no timeout
#   - after Redis returns (restart, SIGCONT), a request is decided by Redis
#     again within $RECOVER seconds, and the access log shows no fallback
#     decision on any worker after that
#   - the module's counters (dify_status_metrics) say what the log says
#   - afterwards the limit is exact: a fresh key with rate=10 r/h burst=10
#     gets exactly 10 of 15 concurrent requests, in every location
#   - no fallback decision by a new worker whose Redis handshake is not
#     answered yet, Redis being up (its first commands queue behind it)
#
# Three locations per fallback mode: /MODE/g/v1 (a limit no key reaches),
# /MODE/t/v1 (rate=10 r/s burst=10: wrk's "tight" keys are far over it)
# and /MODE/x/v1 (the exactness check).  The upstream is a module-less
# nginx of its own answering "return 200" (the recording upstream, a
# process per connection, cannot keep up with wrk); what reached it is
# counted from its access log.  A figures table goes to the TAP output
# (diag), for the CI log.
#
# Part of "make test" (and "make test-asan"); alone:
#   make build
#   DIFY_MODULE=$PWD/build/ngx_http_dify_status_module.so prove -v t/40-faults-load.t
# or, with an ASan build (make test-asan builds build/asan/...so):
#   DIFY_MODULE=$PWD/build/asan/ngx_http_dify_status_module.so \
#       DIFY_SANITIZE=asan prove -v t/40-faults-load.t
# Skipped with valgrind (far too slow for a load test) and when wrk is
# missing.  About 20-30 s; every wait and loop is bounded.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time sleep);
use File::Spec;
use DifyTest;
use DifyLimit qw(fresh_key key_hash tat_key patch patch_bytes wait_for);

DifyTest::require_module();

plan skip_all => 'DIFY_SANITIZE=valgrind: a load test under valgrind would '
    . 'measure valgrind (t/11 and t/12 cover the same faults without load)'
    if DifyTest->valgrind;

my $WRK = $ENV{WRK} // (grep { -x } map { File::Spec->catfile($_, 'wrk') }
                        File::Spec->path)[0];
plan skip_all => 'wrk is not installed (apt-get install wrk): it drives '
    . 'the load' unless $WRK && -x $WRK;

# ---------------------------------------------------------------------------
# figures

my $WORKERS = 2;
my @MODES   = qw(allow deny local);
my $NGEN    = 6;        # generous keys per mode (never limited)
my $NTIGHT  = 3;        # keys over their limit per mode
my $TIGHT_R = 10;       # their limit: rate=10 r/s burst=10
my $EXACT   = 10;       # the exactness check: rate=10 r/h burst=10
my $THREADS = 2;
my $CONNS   = 12;

# Redis comes back within a second of returning (README: backoff from
# 50 ms up to 500 ms, then a handshake).  1.5 s allows for a 2-core machine
# that also runs wrk, the abort clients, Redis and two workers flat out:
# a worker's timer can fire late when its CPU is taken.
my $RECOVER = 1.5;

my $REDIS_TIMEOUT = 200;    # ms: long enough for clients to give up mid-wait
my $UP_PORT;                # the upstream nginx's port
my $MAIN = "worker_rlimit_core 1g;\nworking_directory %%DIR%%;";

sub http_conf {
    my $locs = '';
    for my $mode (@MODES) {
        for my $loc ([ g => 'rate=100000 r/s burst=100000' ],
                     [ t => "rate=$TIGHT_R r/s burst=$TIGHT_R" ],
                     [ x => "rate=$EXACT r/h burst=$EXACT" ])
        {
            $locs .= qq{
        location /$mode/$loc->[0]/v1/ {
            set \$dl $mode/$loc->[0];
            dify_status on;
            dify_status_limit $loc->[1];
            dify_status_redis_fallback $mode;
            proxy_pass http://fast;
        }};
        }
    }
    return qq{
    dify_status_redis %%REDIS%% timeout=${REDIS_TIMEOUT}ms connect_timeout=200ms;

    log_format load '\$msec \$pid \$status \$dify_status \$dify_status_key '
                    '\$upstream_status \$request_time \$dl';
    upstream fast {
        server 127.0.0.1:$UP_PORT;
        keepalive 32;
    }

    server {
        listen 127.0.0.1:%%PORT%%;
        access_log %%DIR%%/load.log load;
        add_header X-Dify-Status \$dify_status always;
        dify_status_log_level info;
        set \$dl -;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
$locs
        location = /metrics {
            access_log off;
            dify_status_metrics;
        }
    }
};
}

# the upstream: a module-less nginx of its own, never reloaded (were it a
# server block of the nginx under test, each reload would close its
# kept-alive upstream connections under the PATCHes in flight, and nginx
# does not retry a PATCH: 502s that are no fault of the module)
sub upstream_conf {
    return q{
    log_format up '$msec $pid $status $uri';
    server {
        listen 127.0.0.1:%%PORT%%;
        access_log %%DIR%%/up.log up;
        keepalive_requests 1000000;
        location / {
            default_type application/json;
            return 200 '{"result": "success"}';
        }
    }
};
}

# ---------------------------------------------------------------------------
# who is who in the access log: $dify_status_key -> [class, mode, kind]

my %WHO;
my $RUN = sprintf '%x%04x', $$, int(rand 0xffff);
my $WRK_PREFIX = "dataset-load-$RUN-";
my $ABORT_PREFIX = "dataset-abort-$RUN-";

sub who {
    my ($key, $class, $mode, $kind) = @_;
    $WHO{ substr key_hash($key), 0, 12 } = [ $class, $mode, $kind // '' ];
    return $key;
}

for my $mode (@MODES) {
    who("$WRK_PREFIX$mode-g$_", 'wrk-g', $mode, "g$_") for 1 .. $NGEN;
    who("$WRK_PREFIX$mode-t$_", 'wrk-t', $mode, "t$_") for 1 .. $NTIGHT;
    who("$ABORT_PREFIX$mode-body", 'abort-body', $mode);
    who("$ABORT_PREFIX$mode-wait", 'abort-wait', $mode);
    who("$ABORT_PREFIX$mode-midwait", 'midwait', $mode);
}

# ---------------------------------------------------------------------------
# the run

# notice: the module's rejections (at info, below) and nginx's "client
# prematurely closed connection" would make the error log hundreds of MB
my $t = DifyTest->new(log_level => $ENV{DIFY_TEST_LOG_LEVEL} // 'notice');
my $dir = $t->dir;
my @events;                     # [ time, name ]
sub event { push @events, [ time, $_[0] ]; return $events[-1][0] }

my $up = DifyTest->new;
$up->start_nginx(no_module => 1, no_upstream => 1, upstream_block => 0,
                 workers => 1, http => upstream_conf());
$UP_PORT = $up->port('PORT');

$t->start_redis;
event('nginx start');
$t->start_nginx(workers => $WORKERS, main => $MAIN, http => http_conf(),
                no_upstream => 1, upstream_block => 0);
my $port = $t->port('PORT');

# a request decided by Redis, on a fresh key: returns the time it was sent
sub probe {
    my ($tag) = @_;
    my $key = who(fresh_key("probe$tag"), 'probe', 'deny');
    my $t0 = time;
    my $r = patch($t, $key, prefix => '/deny/g/v1',
                  timeout => DifyTest::timeout(5));
    return (($r->{headers}{'x-dify-status'} // '') eq 'passed' ? $t0 : undef,
            $r);
}

# polls with single requests until one is decided by Redis; returns the
# seconds from $since to the request that was, or undef
sub first_on_redis {
    my ($since, $within, $tag) = @_;
    my $deadline = time + $within;
    my $n = 0;
    while (time < $deadline && $n++ < 2000) {
        my ($ok) = probe($tag);
        return $ok - $since if defined $ok;
        sleep 0.01;
    }
    return undef;
}

# every worker on Redis before the load starts: 2 * workers + 2 in a row
{
    my $row = 0;
    ok wait_for(DifyTest::timeout(10), sub {
        my ($ok) = probe('warm');
        $row = defined $ok ? $row + 1 : 0;
        return $row >= 2 * $WORKERS + 2;
    }), 'warm-up: the workers are on Redis';
}

my %pids = (start => [ $t->worker_pids ]);
is scalar @{ $pids{start} }, $WORKERS, "$WORKERS workers";

my $wrk_out = "$dir/wrk.counts";
my $abort_out = "$dir/abort.counts";
my $wrk = $t->_spawn('wrk', [ $WRK, '-t', $THREADS, '-c', $CONNS,
        '-d', '120s', '--timeout', '5s', '-s', "$FindBin::Bin/lib/load.lua",
        "http://127.0.0.1:$port", '--', $wrk_out, $WRK_PREFIX,
        join(',', @MODES), $NGEN, $NTIGHT ],
    output => "$dir/wrk.stdout");
my $aborters = $t->_spawn('aborters', [ $^X,
        "$FindBin::Bin/lib/abort-clients.pl", '--port', $port,
        '--prefix', $ABORT_PREFIX, '--modes', join(',', @MODES),
        '--duration', 120, '--out', $abort_out ],
    output => "$dir/abort.stdout");
event('load');

sub alive {
    my ($what) = @_;
    ok !DifyTest::_is_dead($wrk->{pid}), "$what: wrk is running"
        or diag DifyTest::_slurp("$dir/wrk.stdout");
}

sub same_workers {
    my ($what, $before) = @_;
    my @now = $t->worker_pids;
    is "@now", "@$before", "$what: the same worker processes";
}

# --- 1. baseline
sleep 3;
alive('baseline');
same_workers('baseline', $pids{start});

# --- 2. Redis killed, started again a second later
my %recovery;
{
    event('kill');
    $t->kill_redis;
    sleep 1;
    $t->start_redis;
    my $back = event('redis back (restart)');
    $recovery{restart}{since} = $back;
    $recovery{restart}{probe} = first_on_redis($back, 5, 'restart');
    sleep 2;
    event('kill settled');
    alive('kill');
    same_workers('kill and restart', $pids{start});
}

# --- 3. Redis hung (SIGSTOP) a second, then SIGCONT; clients give up
#        mid-wait right after the stop, while their EVALSHAs are pending
my $midwait_sent = 0;
{
    event('stop');
    $t->pause_redis;
    my @c;
    for my $i (1 .. 4) {
        for my $mode (@MODES) {
            my $c = eval { $t->connect };
            next unless $c;
            $c->send(patch_bytes("$ABORT_PREFIX$mode-midwait",
                                 prefix => "/$mode/g/v1"));
            push @c, $c;
        }
    }
    $midwait_sent = @c;
    sleep 0.05;
    $_->close for @c;
    sleep 0.95;
    $t->resume_redis;
    my $back = event('redis back (SIGCONT)');
    $recovery{sigcont}{since} = $back;
    $recovery{sigcont}{probe} = first_on_redis($back, 5, 'sigcont');
    sleep 2;
    event('stop settled');
    alive('stop');
    same_workers('SIGSTOP and SIGCONT', $pids{start});
}

# --- 4. nginx -s reload, three times
my @generations = ($pids{start});
for my $n (1 .. 3) {
    event("reload $n");
    ok $t->reload, "reload $n under load";
    my @now = $t->worker_pids;
    is scalar @now, $WORKERS, "reload $n: $WORKERS workers";
    my %old = map { $_ => 1 } map { @$_ } @generations;
    ok !(grep { $old{$_} } @now), "reload $n: all of them new";
    push @generations, \@now;
    sleep 1;
}
event('reloads done');

# --- 5. the abort clients alone (they run all along)
sleep 2;
alive('end');
same_workers('after the last reload', $generations[-1]);

# stop the load: wrk writes its counts on SIGINT
my $wrk_stop = event('wrk stop');
kill 'INT', $wrk->{pid};
ok wait_for(DifyTest::timeout(10), sub { DifyTest::_is_dead($wrk->{pid}) }),
    'wrk stopped';
$t->_stop_proc($wrk, 'KILL', 5);
kill 'TERM', $aborters->{pid};
wait_for(DifyTest::timeout(10), sub { DifyTest::_is_dead($aborters->{pid}) });
$t->_stop_proc($aborters, 'KILL', 5);
event('load stopped');

# ---------------------------------------------------------------------------
# afterwards, the limit is exact again (concurrently, on both workers)

my $evalsha0 = evalsha_calls();
for my $mode (@MODES) {
    my $key = who(fresh_key("exact$mode"), 'exact', $mode);
    my @r = DifyLimit::concurrent($t, $EXACT + 5, $key,
                                  prefix => "/$mode/x/v1");
    my %st;
    $st{"$_->{status} " . ($_->{headers}{'x-dify-status'} // '-')}++ for @r;
    is_deeply \%st, { "200 passed" => $EXACT, "429 limited" => 5 },
        "$mode: exactly $EXACT of " . ($EXACT + 5) . ' concurrent requests '
        . 'of a fresh key pass, decided by Redis'
        or diag explain \%st;
    ok $t->redis('EXISTS', tat_key($key)), "$mode: the key's state is in Redis";
}
cmp_ok evalsha_calls(), '>', $evalsha0,
    'INFO commandstats: Redis ran the script for them';

# the module's own counters (shared memory: the sum over every worker and
# every reload), read once the load is over
my %metric;
{
    my $r = $t->http('GET', '/metrics');
    is $r->{status}, 200, 'metrics scraped';
    for (split /\n/, $r->{body}) {
        next unless /^dify_status_(\w+)(?:\{([^}]*)\})? (\S+)$/;
        my ($name, $labels, $v) = ($1, $2 // '', $3);
        my %l = $labels =~ /(\w+)="([^"]*)"/g;
        $metric{ join ' ', $name, map { "$_=$l{$_}" } sort keys %l } = $v;
    }
}

sub evalsha_calls {
    my $s = $t->redis('INFO', 'commandstats') // '';
    my $n = 0;
    $n += $1 while $s =~ /^cmdstat_eval(?:sha)?:calls=(\d+)/mg;
    return $n;
}

# ---------------------------------------------------------------------------
# count everything

sub first_n {
    my ($n, @l) = @_;
    return @l > $n ? @l[0 .. $n - 1] : @l;
}

sub lines {
    my ($file, $d) = @_;
    return grep { /\S/ } split /\n/, DifyTest::_slurp(($d // $dir) . "/$file");
}

my %t_of = map { $_->[1] => $_->[0] } @events;

# the windows in which a fallback may decide: from the fault until the
# workers are back on Redis ($RECOVER after Redis returned)
# ($msec is the worker's cached clock, updated once per turn of its event
# loop: a decision made just after the fault can be stamped a little
# before it, by a turn, a few ms, more on a loaded machine or with ASan)
my $SKEW = 0.1;
my @windows = (
    [ $t_of{kill} - $SKEW, $t_of{'redis back (restart)'} + $RECOVER, 'kill' ],
    [ $t_of{stop} - $SKEW, $t_of{'redis back (SIGCONT)'} + $RECOVER, 'stop' ],
);

my @phases = (
    [ 'warm-up',  0 ],
    [ 'baseline', $t_of{load} ],
    [ 'kill',     $t_of{kill} ],
    [ 'stop',     $t_of{stop} ],
    (map { [ "reload $_", $t_of{"reload $_"} ] } 1 .. 3),
    [ 'aborts',   $t_of{'reloads done'} ],
    [ 'wrk stop', $t_of{'wrk stop'} ],
    [ 'exact',    $t_of{'load stopped'} ],
);

sub phase_of {
    my ($ts) = @_;
    my $p = $phases[0][0];
    for (@phases) { $p = $_->[0] if $ts >= $_->[1] }
    return $p;
}

my %ALLOWED = (
    allow => { '200 passed' => 1, '200 fallback_allowed' => 1,
               '429 limited' => 1 },
    deny  => { '200 passed' => 1, '429 limited' => 1,
               '503 fallback_denied' => 1 },
    local => { '200 passed' => 1, '200 fallback_passed' => 1,
               '429 limited' => 1, '429 fallback_limited' => 1 },
);

sub allowed {
    my ($l) = @_;
    my $sd = "$l->{status} $l->{dify}";
    my %ok = %{ $ALLOWED{ $l->{mode} } };
    if ($l->{loc} eq 'g') {
        delete $ok{$_} for grep { /^429/ } keys %ok;
    }
    my $c = $l->{class};
    if ($c eq 'abort-body') {
        # the body never completes: nginx gives up reading it
        return $sd eq '400 -' || $sd eq '499 -';
    }
    # 499, the client went away: before the module decided ("-"), after
    # it let the request on (while it was upstream), or between a decision
    # and its answer (a Redis reply posts the answer; the client's close,
    # in the same turn of the event loop, comes first)
    my $gone = $l->{status} == 499
        && ($l->{dify} eq '-'
            || grep { /^\d+ \Q$l->{dify}\E$/ } keys %ok);
    if ($c eq 'abort-wait' || $c eq 'midwait') {
        return 1 if $gone;
    }
    if ($c eq 'wrk-g' || $c eq 'wrk-t') {
        # the requests in flight when wrk was stopped
        return 1 if $gone && $l->{msec} >= $wrk_stop - $SKEW;
    }
    if ($c eq 'exact') {
        return $sd eq '200 passed' || $sd eq '429 limited';
    }
    return $ok{$sd} ? 1 : 0;
}

my (@log, @bad, %by_phase, @fallback_outside, %key_count, %pid_seen,
    %first_passed);
for my $line (lines('load.log')) {
    my ($msec, $pid, $status, $dify, $key, $ups, $rt, $dl) = split / /, $line;
    my ($mode, $loc) = ($dl // '') =~ m{^(allow|deny|local)/([gtx])$};
    my $who = $WHO{ $key // '' } // [ 'unknown', '', '' ];
    my $l = { msec => $msec, pid => $pid, status => $status, dify => $dify,
              key => $key, ups => $ups, rt => $rt,
              mode => $mode // '?', loc => $loc // '?',
              class => $who->[0], line => $line };
    push @log, $l;
    $pid_seen{$pid}++;

    if (!defined $mode || $who->[1] ne $mode || !allowed($l)) {
        push @bad, $line;
    }
    my $ph = phase_of($msec);
    $by_phase{$ph}{ $l->{mode} }{"$status $dify"}++;
    $key_count{$key}{"$status $dify"}++;

    if ($dify =~ /^fallback_/) {
        my $in = grep { $msec >= $_->[0] && $msec <= $_->[1] } @windows;
        push @fallback_outside, $l unless $in;
    } elsif ($dify eq 'passed') {
        # (only a Redis reply passes a request; "limited" may come from
        # the shared-memory shadow, without Redis)
        $first_passed{$pid} = $msec
            if !defined $first_passed{$pid} || $msec < $first_passed{$pid};
    }
}

# A fallback decision outside the outages made by a worker that had not
# yet had a Redis answer is a new worker's first request(s) arriving
# before its Redis handshake is done (at start, or after a reload): the
# module then takes the fallback at once, as for a Redis that is down.
# The module queues those commands behind the handshake instead: this
# must not happen (on loopback the window is a fraction of a millisecond,
# so the check below would rarely catch a regression alone; see
# t/11-redis-faults.t for one that does).
my %born;                        # worker pid -> when its generation started
for my $g (0 .. $#generations) {
    $born{$_} = $g ? $t_of{"reload $g"} : $t_of{'nginx start'}
        for @{ $generations[$g] };
}
my (%fallback_outside, %fallback_startup);
for my $l (@fallback_outside) {
    my $first = $first_passed{ $l->{pid} };
    my $born = $born{ $l->{pid} } // 0;
    my $h = ((!defined $first || $l->{msec} <= $first)
             && $l->{msec} <= $born + $RECOVER)
          ? \%fallback_startup : \%fallback_outside;
    push @{ $h->{ phase_of($l->{msec}) } }, $l;
}

cmp_ok scalar @log, '>', 1000, 'the access log has the load (' . @log
    . ' responses)';

my %status_all;
$status_all{ $_->{status} }++ for @log;
my @fatal = grep { /^5(?:00|02|04)$/ } keys %status_all;
ok !@fatal, 'no 500, 502 or 504'
    or diag join ', ', map { "$_ x$status_all{$_}" } @fatal;

ok !@bad, 'every response is one its location\'s fallback allows ('
    . scalar(@log) . ' checked)'
    or diag scalar(@bad) . " outside the allowed set, e.g.:\n  "
        . join("\n  ", first_n(20, @bad));

{
    my @out = map { @{ $fallback_outside{$_} } } sort keys %fallback_outside;
    ok !@out, 'fallback decisions only while Redis was down or hung (and '
        . "${RECOVER}s after), or before a new worker's handshake"
        or diag scalar(@out) . " outside, by phase: "
            . join(', ', map { "$_: " . scalar @{ $fallback_outside{$_} } }
                   sort keys %fallback_outside)
            . "\n  e.g.\n  " . join("\n  ",
                map { $_->{line} } first_n(10, @out));
}

# a new worker queues its first commands behind its Redis handshake
{
    my @s = map { @{ $fallback_startup{$_} } } sort keys %fallback_startup;
    ok !@s, 'no fallback decision while a new worker connects to a Redis '
        . 'that is up'
        or diag scalar(@s) . ' before the handshake: ' . join("\n  ", '',
            map { $_->{line} } first_n(10, @s));
}

# the module counted what the access log shows
{
    my (%n, $passing, $passing_gone);
    for (@log) {
        $n{ $_->{dify} }++;
        $n{"status $_->{status}"}++;
        if ($_->{dify} =~ /^(?:passed|fallback_allowed|fallback_passed)$/) {
            $passing++;
            $passing_gone++ if $_->{status} == 499;
        }
    }
    my %want = (
        'requests_checked_total' => scalar @log,
        'requests_limited_total' => $n{limited} // 0,
        'fallback_decisions_total mode=allow result=passed'
            => $n{fallback_allowed} // 0,
        'fallback_decisions_total mode=deny result=denied'
            => $n{fallback_denied} // 0,
        'fallback_decisions_total mode=local result=passed'
            => $n{fallback_passed} // 0,
        'fallback_decisions_total mode=local result=limited'
            => $n{fallback_limited} // 0,
        'requests_rejected_total code=too_many_requests status=429'
            => $n{'status 429'} // 0,
        'requests_rejected_total code=service_unavailable status=503'
            => $n{'status 503'} // 0,
    );
    my %got = map { $_ => $metric{$_} // 0 } keys %want;
    is_deeply \%got, \%want, 'metrics: checked, limited, rejected and '
        . 'fallback decisions are what the access log shows'
        or diag explain { got => \%got, want => \%want };
    # "passed" is counted when the request goes on: not for the requests
    # whose client went away between the decision and that moment
    my $p = $metric{requests_passed_total} // 0;
    ok $p <= $passing && $p >= $passing - ($passing_gone // 0),
        "metrics: passed $p, the access log " . ($passing // 0)
        . ' (of which ' . ($passing_gone // 0) . ' 499)';
}

# the answers of the module never went upstream, the 200s all did
{
    my @leak = grep { $_->{status} =~ /^(?:4|503)/ && $_->{status} != 499
                      && $_->{ups} ne '-' } @log;
    ok !@leak, 'no request the module answered reached the upstream'
        or diag join "\n", map { $_->{line} } first_n(10, @leak);
    my @not = grep { $_->{status} == 200 && $_->{ups} ne '200' } @log;
    ok !@not, 'every 200 is the upstream\'s answer'
        or diag join "\n", map { $_->{line} } first_n(10, @not);

    my $front = grep { $_->{status} == 200 } @log;
    my $aborted = grep { $_->{status} == 499 } @log;
    my $up_n = () = lines('up.log', $up->dir);
    ok $up_n >= $front && $up_n <= $front + $aborted,
        "the upstream got the $front requests that passed (it logged $up_n; "
        . "at most $aborted more may be from clients that gave up)";
}

# the keys over their limit: GCRA lets a key spend one burst, then rate *
# time; the restart forgets its state (one more burst), and with "local"
# each outage can add one more (the node spends from the shadow what Redis
# does not see); 2 for the rounding of two clocks
my $duration = $t_of{'wrk stop'} - $t_of{load};
{
    my %bound;
    for my $mode (@MODES) {
        my $bursts = 2 + ($mode eq 'local' ? scalar @windows : 0);
        $bound{$mode} = int($bursts * $TIGHT_R + $TIGHT_R * $duration) + 2;
    }
    my @over;
    my @tight_report;
    for my $mode (@MODES) {
        my $bound = $bound{$mode};
        for my $i (1 .. $NTIGHT) {
            my $h = substr key_hash("$WRK_PREFIX$mode-t$i"), 0, 12;
            my $c = $key_count{$h} // {};
            # passed by a limit: Redis's, or the local fallback's (allow's
            # fallback passes all, that is its job)
            my $passed = ($c->{'200 passed'} // 0)
                + ($c->{'200 fallback_passed'} // 0);
            my $all = 0;
            $all += $_ for values %$c;
            push @tight_report, sprintf '%s-t%d: %d of %d passed', $mode, $i,
                $passed, $all;
            push @over, "$mode-t$i: $passed > $bound" if $passed > $bound;
            ok(($c->{'429 limited'} // 0) > 0, "$mode-t$i was limited");
        }
    }
    ok !@over, sprintf('keys over their limit passed no more than GCRA '
        . 'allows (rate %d r/s, burst %d, %.1f s: allow and deny %d, local '
        . '%d)', $TIGHT_R, $TIGHT_R, $duration, $bound{deny}, $bound{local})
        or diag join ', ', @over;
    note 'tight keys: ' . join '; ', @tight_report;
}

# the clients that gave up were seen by nginx and answered as they should
{
    my %c;
    $c{ $_->{class} }{ $_->{status} }++ for @log;
    cmp_ok scalar(keys %{ $c{'abort-body'} // {} }), '>', 0,
        'mid-body aborts reached nginx';
    cmp_ok $c{midwait}{499} // 0, '>', 0,
        "mid-wait aborts while Redis was stopped: nginx saw the client go "
        . "(499 x" . ($c{midwait}{499} // 0) . " of $midwait_sent)";
}

# workers: only the reloads replaced them, none crashed
{
    my %known = map { $_ => 1 } map { @$_ } @generations;
    my @strange = grep { !$known{$_} } keys %pid_seen;
    ok !@strange, 'every response came from a worker of the 4 generations'
        or diag "unknown pids: @strange";
    my $log = $t->error_log;
    unlike $log, qr/exited on signal/, 'no worker crashed';
    unlike $log, qr/\[(?:alert|crit|emerg)\]/, 'no alert, crit or emerg';
}

# recovery: single requests, and the access log of every worker
for my $what (qw(restart sigcont)) {
    my $r = $recovery{$what};
    ok defined $r->{probe} && $r->{probe} <= $RECOVER,
        sprintf('%s: a request is decided by Redis %s s after it returned',
                $what, defined $r->{probe}
                    ? sprintf('%.3f', $r->{probe}) : 'never (5)');
    # the last fallback decision of any worker after Redis returned (and
    # before the next fault)
    my $until = $what eq 'restart' ? $t_of{stop} : $t_of{'reload 1'};
    my @after = grep { $_->{dify} =~ /^fallback_/ && $_->{msec} >= $r->{since}
                       && $_->{msec} < $until } @log;
    my $last = 0;
    for (@after) {
        $last = $_->{msec} - $r->{since} if $_->{msec} - $r->{since} > $last;
    }
    $r->{all} = $last;
    ok $last <= $RECOVER, sprintf('%s: every worker back on Redis %.3f s '
        . 'after it returned (last fallback decision in the log)', $what,
        $last);
}

# wrk's own view
my (%wrk_status, %wrk);
for (lines('wrk.counts')) {
    if (/^status (\d+) (\S+) (\d+)$/) { $wrk_status{"$1 $2"} += $3 }
    elsif (/^wrk (.*)$/) { %wrk = map { split /=/ } split / /, $1 }
}
ok %wrk, 'wrk wrote its counts'
    or diag DifyTest::_slurp("$dir/wrk.stdout");
is $wrk{timeout} // -1, 0, 'wrk: no request timed out (5 s)';
{
    my %log_wrk;
    $log_wrk{"$_->{status} $_->{dify}"}++
        for grep { $_->{class} =~ /^wrk-/ } @log;
    my @more = grep { $wrk_status{$_} > ($log_wrk{$_} // 0) }
        keys %wrk_status;
    ok !@more, 'wrk received nothing that nginx did not log'
        or diag join ', ', map { "$_: wrk $wrk_status{$_}, log "
            . ($log_wrk{$_} // 0) } @more;
}

# ---------------------------------------------------------------------------
# the figures, for the CI log

{
    # columns: decided by Redis (200, 429), by the fallback (fb), clients
    # that went away (499, any outcome), bodies cut short (400), the rest
    my @short = ('200', '429', '200fb', '429fb', '503fb', '499', '400',
                 'other');
    my $col = sub {
        my ($sd) = @_;
        return '200' if $sd eq '200 passed';
        return '429' if $sd eq '429 limited';
        return '200fb' if $sd =~ /^200 fallback_(?:allowed|passed)$/;
        return '429fb' if $sd eq '429 fallback_limited';
        return '503fb' if $sd eq '503 fallback_denied';
        return '499' if $sd =~ /^499 /;
        return '400' if $sd =~ /^400 /;
        return 'other';
    };
    my $out = "decided by Redis: 200, 429; by the fallback: 200fb, 429fb, "
        . "503fb (allow: fallback_allowed, local: fallback_passed)\n"
        . sprintf "%-9s %-5s %7s" . (" %6s" x @short) . "\n",
        'phase', 'mode', 'total', @short;
    for my $ph (map { $_->[0] } @phases) {
        for my $mode (@MODES) {
            my $c = $by_phase{$ph}{$mode} or next;
            my (%n, $total);
            for (keys %$c) {
                $n{ $col->($_) } += $c->{$_};
                $total += $c->{$_};
            }
            $out .= sprintf "%-9s %-5s %7d" . (" %6d" x @short) . "\n",
                $ph, $mode, $total, map { $n{$_} // 0 } @short;
        }
    }
    my $total = @log;
    $out .= sprintf "all       %13d responses in %.1f s of load (%.0f/s), "
        . "%d upstream\n", $total, $duration,
        $total / ($duration || 1), scalar(() = lines('up.log', $up->dir));
    $out .= sprintf "wrk: %s responses received (nginx logged %d for its "
        . "keys), errors connect %s read %s write %s timeout %s, latency p50 "
        . "%.1f ms p99 %.1f ms max %.1f ms\n",
        $wrk{requests} // '?', scalar(grep { $_->{class} =~ /^wrk-/ } @log),
        map({ $wrk{$_} // '?' } qw(connect read write timeout)),
        map { ($wrk{$_} // 0) / 1000 } qw(p50_us p99_us max_us);
    $out .= 'abort clients: ' . join(', ', lines('abort.counts'))
        . "; mid-wait at SIGSTOP: $midwait_sent\n";
    for my $st (400, 499) {
        my %c;
        $c{"$_->{class} $_->{dify}"}++ for grep { $_->{status} == $st } @log;
        $out .= "$st by client and outcome: "
            . (join(', ', map { "$_ x$c{$_}" } sort keys %c) || 'none')
            . "\n";
    }
    $out .= sprintf "recovery after restart: probe %.3f s, all workers "
        . "%.3f s; after SIGCONT: probe %.3f s, all workers %.3f s\n",
        map { $_ // -1 } $recovery{restart}{probe}, $recovery{restart}{all},
        $recovery{sigcont}{probe}, $recovery{sigcont}{all};
    $out .= 'worker generations: '
        . join(' | ', map { "@$_" } @generations) . "\n";
    $out .= 'fallbacks outside the outages: '
        . (join(', ', map { "$_ " . scalar @{ $fallback_outside{$_} } }
                sort keys %fallback_outside) || 'none')
        . '; before a new worker\'s handshake (TODO): '
        . (join(', ', map { "$_ " . scalar @{ $fallback_startup{$_} } }
                sort keys %fallback_startup) || 'none') . "\n";
    my @err = grep { /\[error\]/ } split /\n/, $t->error_log;
    my %e;
    for (@err) {
        my ($m) = /(redis "[^"]*" \w+|dify_status: \S+ \S+|client \w+ \w+)/;
        $e{ $m // 'other' }++;
    }
    $out .= 'error log [error]: '
        . join(', ', map { "$_ x$e{$_}" } sort keys %e) . "\n";
    diag "faults under load (" . (DifyTest->asan ? 'asan' : 'plain')
        . "):\n$out";
}

$t->done;
$up->done;
done_testing;
