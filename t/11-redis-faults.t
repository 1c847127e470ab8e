#!/usr/bin/perl
#
# Redis failures (contract row 9 and the fallbacks) against a real
# redis-server and real nginx: Redis down at start, blackholed (the TCP
# connect never completes), killed mid-run and restarted, killed with
# replies pending, hung (SIGSTOP, CLIENT PAUSE ALL and WRITE), NOSCRIPT
# after SCRIPT FLUSH, wrong or missing password, an ACL user (and one
# without access to the keys), db=N and a db that SELECT refuses.
#
# A request refused by the deny fallback while Redis is hung is still
# charged when Redis resumes (its EVALSHA was already on the socket): that
# assertion is a TODO, reported to the lead.
#
# One nginx serves the three fallback modes side by side, on one Redis
# connection per worker:
#   /allow/v1  -> passes (200), no Redis
#   /deny/v1   -> 503 service_unavailable, Retry-After: 1
#   /local/v1  -> limited in shared memory with the key's last known limit
# each with dify_status_limit rate=3 r/h.  Every request must complete
# within $HANG seconds (a hang detector, not a performance assertion), and
# the workers must come back to Redis by themselves within $RECOVER seconds
# of Redis being usable again.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time sleep);
use IO::Socket::INET;
use DifyTest qw(uuid route envelope);
use DifyLimit qw(fresh_key key_hash tat_key limit_key patch concurrent
                 wait_for upstream_for rl policy);

DifyTest::require_module();

my $HANG = DifyTest::timeout(2);
my $RECOVER = DifyTest::timeout(3);
my $WORKERS = 2;

# Under valgrind nginx is ~10x slower (DifyTest::slow()): a Redis reply
# that takes 10 ms takes longer than 100 ms to be read, and would be
# taken for a hang.  The module's timeouts, and the waits and windows the
# scenarios derive from them, are scaled in valgrind mode only.  nginx
# then runs as a single process: worker_processes is ignored and there is
# no reload (DifyTest::reload dies), see reconfigure().
my $VG = DifyTest->valgrind;
my $SLOW = $VG ? DifyTest::slow() : 1;
sub ms { return $_[0] * $SLOW }
my $PROCS = $VG ? 1 : $WORKERS;         # nginx processes that serve

sub statuses { join ' ', map { $_->{status} } @_ }
sub outcomes { join ' ', map { $_->{headers}{'x-dify-status'} // '-' } @_ }

sub http_conf {
    my ($redis_args) = @_;
    my $locs = '';
    for my $mode (qw(allow deny local)) {
        $locs .= qq{
        location /$mode/v1/ {
            dify_status on;
            dify_status_limit rate=3 r/h;
            dify_status_redis_fallback $mode;
            proxy_pass http://upstream;
        }};
    }
    return qq{
    dify_status_redis $redis_args;
    server {
        listen 127.0.0.1:%%PORT%%;
        add_header X-Dify-Status \$dify_status always;
$locs
    }
};
}

my $DEFAULT = '%%REDIS%% timeout=' . ms(100) . 'ms connect_timeout='
    . ms(200) . 'ms';

# a crashed worker leaves a core in the test's directory (kept on failure)
my $MAIN = "worker_rlimit_core 1g;\nworking_directory %%DIR%%;";

# each request within the hang bound
sub no_hang {
    my ($what, @r) = @_;
    my @slow = grep { $_->{status} == 0 || $_->{elapsed} > $HANG } @r;
    ok !@slow, "$what: every request answered within ${HANG}s"
        or diag join ', ', map { sprintf '%s %.2fs %s', $_->{status},
            $_->{elapsed}, $_->{error} // '' } @slow;
}

# Redis is unusable: each fallback mode does what it says
sub check_fallbacks {
    my ($t, $what) = @_;

    subtest "$what: fallback allow" => sub {
        my $key = fresh_key('allow');
        $t->upstream_clear;
        my @r = map { patch($t, $key, prefix => '/allow/v1') } 1 .. 5;
        no_hang('allow', @r);
        is statuses(@r), '200 200 200 200 200', 'all pass (beyond the limit)';
        is outcomes(@r), join(' ', ('fallback_allowed') x 5),
            '$dify_status fallback_allowed';
        is scalar(upstream_for($t, $key)), 5, 'upstream got all 5';
        ok !exists $r[0]{headers}{ratelimit}, 'no RateLimit (nothing known)';
    };

    subtest "$what: fallback deny" => sub {
        my $key = fresh_key('deny');
        $t->upstream_clear;
        my @r = map { patch($t, $key, prefix => '/deny/v1') } 1 .. 3;
        no_hang('deny', @r);
        is statuses(@r), '503 503 503', 'all 503';
        for my $r (@r) {
            like $r->{body}, qr/^\{"status": 503, "code": "service_unavailable", "message": "[^"\\]+"\}$/,
                'envelope 503 service_unavailable';
            is $r->{headers}{'retry-after'}, 1, 'Retry-After: 1';
            is $r->{headers}{'content-type'}, 'application/json', 'JSON';
        }
        $t->nothing_upstream('fallback deny');
    };

    subtest "$what: fallback local" => sub {
        my $key = fresh_key('local');
        $t->upstream_clear;
        my $t0 = time;
        my ($span, @r);
        for my $i (1 .. 5) {
            push @r, patch($t, $key, prefix => '/local/v1');
            $span = time - $t0 if $i == 4;
        }
        no_hang('local', @r);
        is statuses(@r), '200 200 200 429 429', 'the limit of 3 enforced';
        is outcomes(@r), 'fallback_passed fallback_passed fallback_passed '
            . 'fallback_limited fallback_limited', '$dify_status';
        is scalar(upstream_for($t, $key)), 3, 'upstream got exactly 3';
        # 1200 s (rate 3 r/h) less the whole seconds between the first
        # decision and the fourth: exactly 1200 when the four requests
        # take less than a second; more may pass when each waits for a
        # timeout (CLIENT PAUSE WRITE, the timeouts scaled for valgrind)
        my $min = 1200 - int($span);
        my ($secs) = ($r[3]{body} // '') =~ /retry in (\d+) seconds?\./;
        $secs //= -1;
        ok $secs >= $min && $secs <= 1200,
            "retry in 1200 s, less the ${\ int($span) } whole s elapsed"
            or diag sprintf 'retry in %s s, %.2f s after the first request',
                $secs, $span;
        is $r[3]{body}, envelope(429, 'too_many_requests',
            "Rate limit exceeded for this API key; retry in $secs seconds."),
            'the row 8 answer';
        is $r[3]{headers}{'retry-after'}, $secs, 'Retry-After';
        is $r[3]{headers}{'ratelimit-policy'}, '"default";q=3;w=3600',
            'RateLimit-Policy';
        is_deeply [ map { rl($_)->{r} } @r[0 .. 2] ], [ 2, 1, 0 ],
            'RateLimit r';

        # shared memory: the limit holds across workers, concurrently
        my $k2 = fresh_key('localc');
        $t->upstream_clear;
        my @c = concurrent($t, 20, $k2, prefix => '/local/v1');
        no_hang('local, concurrent', @c);
        is scalar(grep { $_->{status} == 200 } @c), 3,
            'concurrently: exactly 3 of 20 pass';
        is scalar(upstream_for($t, $k2)), 3, 'upstream got exactly 3';
    };
}

# the workers use Redis again: $n probes in a row are decided by Redis
sub recovers {
    my ($t, $what, %o) = @_;
    my $n = $o{n} // 2 * $WORKERS + 2;
    my $within = $o{within} // $RECOVER;
    my $t0 = time;
    my $row = 0;
    my $last;
    my $ok = wait_for($within, sub {
        my $k = fresh_key('probe');
        $last = patch($t, $k, prefix => '/deny/v1');
        my $in_redis = defined $o{db}
            ? $t->redis_cli('-n', $o{db}, 'EXISTS', tat_key($k))
            : eval { $t->redis('EXISTS', tat_key($k)) } // 0;
        if ($last->{status} == 200
            && ($last->{headers}{'x-dify-status'} // '') eq 'passed'
            && $in_redis)
        {
            return ++$row >= $n;
        }
        $row = 0;
        return 0;
    });
    ok $ok, sprintf('%s: back on Redis by itself (%d probes in a row, '
        . '%.2fs)', $what, $n, time - $t0)
        or diag "last probe: $last->{status} "
            . ($last->{headers}{'x-dify-status'} // '') . " $last->{body}";
    $t->upstream_clear;
    return $ok;
}

# DIFY_ONLY=regex runs only the scenarios whose name matches; a die is
# reported as a failure with its message, and the next scenario runs
sub scenario {
    my ($name, $code) = @_;
    if (defined $ENV{DIFY_ONLY} && $name !~ /$ENV{DIFY_ONLY}/) {
        return;
    }
    subtest $name => sub {
        eval { $code->(); 1 } or fail("died: $@");
    };
}

sub warm {
    my ($t) = @_;
    recovers($t, 'warm-up', within => DifyTest::timeout(10));
}

# the same nginx with another configuration: a reload, or in valgrind mode
# (a single process, no reload) a graceful stop and a new start on the
# same ports, so that the module's paths under the new configuration still
# run under valgrind
sub reconfigure {
    my ($t, %a) = @_;
    if ($VG) {
        SKIP: {
            skip 'valgrind mode: a single process, no reload '
                . '(restarted with the new configuration instead)', 1;
        }
        $t->stop_nginx;
        $t->start_nginx(%a);
        return 1;
    }
    return ok $t->reload(%a), 'reload';
}

# ---------------------------------------------------------------------------
scenario 'Redis down at start' => sub {
    my $t = DifyTest->new;
    $t->start_nginx(workers => $WORKERS, main => $MAIN, http => http_conf($DEFAULT));

    check_fallbacks($t, 'down at start');

    # the failure is logged once per worker, not once per attempt
    sleep 0.6;
    my @l = grep { /unreachable/ } split /\n/, $t->error_log;
    cmp_ok scalar(@l), '>=', 1, 'unreachable Redis logged';
    cmp_ok scalar(@l), '<=', $PROCS, 'once per worker, not per retry'
        or diag join "\n", @l;

    $t->start_redis;
    recovers($t, 'Redis started');

    # and the limit is Redis's again: exact, with its state
    my $key = fresh_key('after');
    my @r = map { patch($t, $key, prefix => '/deny/v1') } 1 .. 4;
    is statuses(@r), '200 200 200 429', 'counted by Redis';
    is outcomes(@r), 'passed passed passed limited', 'not by a fallback';
    ok $t->redis('EXISTS', tat_key($key)), 'state in Redis';
    $t->done;
};

scenario 'Redis blackholed: the TCP connect never completes' => sub {
    # a listener that never accepts, its queue filled: SYNs go unanswered
    my $l = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                  Listen => 0, Proto => 'tcp')
        or die "listen: $!";
    my @fill;
    for (1 .. 64) {
        my $c = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
            PeerPort => $l->sockport, Proto => 'tcp', Timeout => 0.3);
        last unless $c;
        push @fill, $c;
    }
    my $c = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
        PeerPort => $l->sockport, Proto => 'tcp', Timeout => 0.3);
    ok !$c, 'connecting to the blackhole hangs';

    my $t = DifyTest->new;
    $t->start_nginx(workers => $WORKERS, main => $MAIN, http => http_conf(
        '127.0.0.1:' . $l->sockport . ' timeout=' . ms(100)
        . 'ms connect_timeout=' . ms(200) . 'ms'));
    sleep 0.3 * $SLOW;                  # past connect_timeout
    check_fallbacks($t, 'blackholed');
    my $ct = ms(200);
    like $t->error_log, qr/unreachable: no answer in $ct ms/,
        'the connect timeout is logged';
    $t->done;
    close $_ for @fill;
    close $l;
};

# ---------------------------------------------------------------------------
scenario 'Redis killed mid-run, then restarted' => sub {
    my $t = DifyTest->new;
    $t->start_redis;
    $t->start_nginx(workers => $WORKERS, main => $MAIN, http => http_conf($DEFAULT));
    warm($t);

    # known to Redis before it goes: one request each, and an override
    my $kl = fresh_key('known');
    $t->redis('HSET', limit_key($kl), 'burst', '2');
    my $r = patch($t, $kl, prefix => '/local/v1');
    is $r->{status}, 200, 'known key passes via Redis';
    is rl($r)->{r}, 1, 'its override: burst 2, r=1';
    my $kd = fresh_key('deny-known');
    is patch($t, $kd, prefix => '/deny/v1')->{status}, 200,
        'deny-mode key passes via Redis';

    $t->kill_redis;

    check_fallbacks($t, 'killed');

    subtest 'fallback local keeps the key\'s last known limit and state' => sub {
        $t->upstream_clear;
        my @r = map { patch($t, $kl, prefix => '/local/v1') } 1 .. 3;
        no_hang('local, known key', @r);
        is statuses(@r), '200 429 429',
            'one more passes (burst 2 of the override, 1 used)';
        like outcomes(@r),
            qr/^fallback_passed (?:fallback_)?limited (?:fallback_)?limited$/,
            'decided locally (by the fallback, or by the shadow of the '
            . 'key\'s state, which knows it is limited)';
        is $r[0]{headers}{'ratelimit-policy'}, '"default";q=2;w=2400',
            'the override\'s policy';
        is scalar(upstream_for($t, $kl)), 1, 'upstream got 1';
    };

    $r = patch($t, $kd, prefix => '/deny/v1');
    is $r->{status}, 503, 'deny: a known key is denied too';

    $t->start_redis;
    recovers($t, 'Redis restarted');

    my $key = fresh_key('after');
    my @r = map { patch($t, $key, prefix => '/allow/v1') } 1 .. 4;
    is statuses(@r), '200 200 200 429', 'allow-mode location limited by Redis again';
    is outcomes(@r), 'passed passed passed limited', 'not by a fallback';
    $t->done;
};

scenario 'Redis killed while replies are pending' => sub {
    my $t = DifyTest->new;
    $t->start_redis;
    # a long timeout: the answer must come from the lost connection
    $t->start_nginx(workers => 1, main => $MAIN,
        http => http_conf('%%REDIS%% timeout=' . ms(5000)
                          . 'ms connect_timeout=' . ms(200) . 'ms'));
    warm($t);

    $t->pause_redis;
    my @c = map { DifyLimit::send_pending($t, fresh_key('pend'),
                      prefix => "/$_/v1") } qw(allow deny local);
    sleep 0.3;
    # SIGKILL while stopped: it never answers (the harness's kill_redis
    # would SIGCONT it first)
    kill 'KILL', $t->{procs}{redis}{pid};
    $t->kill_redis;
    my @r = map { DifyLimit::_read($_, $_->{t0}, DifyTest::timeout(10)) } @c;
    ok !(grep { $_->{status} == 0 || $_->{elapsed} > 3 * $SLOW } @r),
        'answered when the connection was lost, before the '
        . 5 * $SLOW . ' s timeout'
        or diag join ', ', map { sprintf '%s %.2fs', $_->{status},
            $_->{elapsed} } @r;
    is statuses(@r), '200 503 200', 'allow 200, deny 503, local 200';
    is outcomes(@r), 'fallback_allowed fallback_denied fallback_passed',
        'by the fallbacks';

    $t->start_redis;
    recovers($t, 'Redis restarted');
    $t->done;
};

# ---------------------------------------------------------------------------
scenario 'Redis hung (SIGSTOP), then SIGCONT' => sub {
    my $t = DifyTest->new;
    $t->start_redis;
    $t->start_nginx(workers => $WORKERS, main => $MAIN, http => http_conf($DEFAULT));
    warm($t);

    my $kl = fresh_key('known');
    patch($t, $kl, prefix => '/local/v1') for 1 .. 2;

    $t->pause_redis;
    check_fallbacks($t, 'SIGSTOP');

    my $r = patch($t, $kl, prefix => '/local/v1');
    is $r->{status}, 200, 'local: the known key\'s third request passes';
    $r = patch($t, $kl, prefix => '/local/v1');
    is $r->{status}, 429, 'local: its fourth is limited';
    ok $r->{elapsed} < $HANG, 'in time';

    # still hung a while later: still answered in time
    sleep 1;
    my @r = map { patch($t, fresh_key('later'), prefix => '/deny/v1') } 1 .. 4;
    no_hang('a second later', @r);
    is statuses(@r), '503 503 503 503', 'still denied';

    $t->resume_redis;
    recovers($t, 'SIGCONT');

    like $t->error_log, qr/redis "[^"]+" (?:lost|unreachable)/,
        'the hang was logged';
    $t->done;
};

scenario 'a request refused by the deny fallback costs no quota' => sub {
    my $t = DifyTest->new;
    $t->start_redis;
    $t->start_nginx(workers => 1, main => $MAIN, http => http_conf($DEFAULT));
    warm($t);

    my $key = fresh_key('orphan');
    my $r = patch($t, $key, prefix => '/deny/v1');
    is rl($r)->{r}, 2, 'one request used (r=2)';

    $t->pause_redis;
    $r = patch($t, $key, prefix => '/deny/v1');
    is $r->{status}, 503, 'refused while Redis is hung';
    $t->resume_redis;
    recovers($t, 'SIGCONT');

    $r = patch($t, $key, prefix => '/deny/v1');
    is $r->{status}, 200, 'passes';
    TODO: {
        local $TODO = 'the EVALSHA of the refused request was already on '
            . 'the socket: Redis runs it when it resumes and charges it';
        is rl($r)->{r}, 1, 'the refused request cost nothing (r=1)';
    }
    $t->done;
};

scenario 'Redis paused (CLIENT PAUSE ALL, then WRITE)' => sub {
    my $t = DifyTest->new;
    $t->start_redis;
    $t->start_nginx(workers => $WORKERS, main => $MAIN, http => http_conf($DEFAULT));
    warm($t);

    # the checks must run while Redis is paused: the window scales with
    # the timeouts
    my $pause = ms(2500);
    my $t0 = time;
    is $t->redis('CLIENT', 'PAUSE', $pause, 'ALL'), 'OK', 'CLIENT PAUSE ALL';
    check_fallbacks($t, 'CLIENT PAUSE ALL');
    my $left = $pause / 1000 - (time - $t0);
    ok $left > 0, 'the checks ran while Redis was paused'
        or diag sprintf 'took %.2fs', time - $t0;
    recovers($t, 'pause over', within => $RECOVER + ($left > 0 ? $left : 0));

    # WRITE: PING and the handshake work, the script does not
    $t0 = time;
    is $t->redis('CLIENT', 'PAUSE', $pause, 'WRITE'), 'OK',
        'CLIENT PAUSE WRITE';
    check_fallbacks($t, 'CLIENT PAUSE WRITE');
    $left = $pause / 1000 - (time - $t0);
    ok $left > 0, 'the checks ran while Redis was paused'
        or diag sprintf 'took %.2fs', time - $t0;
    recovers($t, 'pause over', within => $RECOVER + ($left > 0 ? $left : 0));
    $t->done;
};

# ---------------------------------------------------------------------------
scenario 'SCRIPT FLUSH between requests: NOSCRIPT, then EVAL' => sub {
    my $t = DifyTest->new;
    $t->start_redis;
    $t->start_nginx(workers => $WORKERS, main => $MAIN, http => http_conf($DEFAULT));
    warm($t);

    for my $mode (qw(deny allow local)) {
        my $key = fresh_key("flush$mode");
        my @r;
        for (1 .. 4) {
            is $t->redis('SCRIPT', 'FLUSH'), 'OK', 'SCRIPT FLUSH';
            push @r, patch($t, $key, prefix => "/$mode/v1");
        }
        is statuses(@r), '200 200 200 429', "$mode: exact count across flushes";
        is outcomes(@r), 'passed passed passed limited',
            "$mode: decided by Redis, no fallback";
        is_deeply [ map { rl($_)->{r} } @r ], [ 2, 1, 0, 0 ], "$mode: RateLimit r";
    }

    my $stats = $t->redis('INFO', 'commandstats');
    like $stats, qr/^cmdstat_eval:calls=[1-9]/m, 'EVAL was used';

    # many NOSCRIPTs at once, pipelined on the workers' connections
    my $key = fresh_key('flushc');
    $t->redis('HSET', limit_key($key), 'burst', '10');
    $t->redis('SCRIPT', 'FLUSH');
    $t->upstream_clear;
    my @r = concurrent($t, 30, $key, prefix => '/deny/v1');
    no_hang('concurrent after a flush', @r);
    is scalar(grep { $_->{status} == 200 } @r), 10,
        'concurrently after a flush: exactly 10 of 30 pass';
    is scalar(grep { $_->{status} == 429 } @r), 20, 'and 20 get 429, none 503';
    is scalar(upstream_for($t, $key)), 10, 'upstream got exactly 10';
    $t->done;
};

# ---------------------------------------------------------------------------
scenario 'wrong password, then fixed on the Redis side' => sub {
    my $t = DifyTest->new;
    $t->start_redis(password => 'right-pw');
    $t->start_nginx(workers => $WORKERS, main => $MAIN,
        http => http_conf("$DEFAULT password=wrong-pw"));

    check_fallbacks($t, 'wrong password');
    my $log = $t->error_log;
    like $log, qr/AUTH failed/, 'AUTH failure logged';
    unlike $log, qr/wrong-pw|right-pw/, 'no password in the log';

    $t->redis('CONFIG', 'SET', 'requirepass', 'wrong-pw');
    $t->{redis_password} = 'wrong-pw';      # the harness's own client
    recovers($t, 'password fixed');
    $t->done;
};

scenario 'no password, Redis requires one (NOAUTH)' => sub {
    my $t = DifyTest->new;
    $t->start_redis(password => 'pw');
    $t->start_nginx(workers => $WORKERS, main => $MAIN, http => http_conf($DEFAULT));

    check_fallbacks($t, 'NOAUTH');

    $t->redis('CONFIG', 'SET', 'requirepass', '');
    $t->{redis_password} = undef;
    recovers($t, 'password requirement lifted');
    $t->done;
};

# ---------------------------------------------------------------------------
scenario 'ACL user' => sub {
    my $t = DifyTest->new;
    $t->start_redis(password => 'admin-pw');
    is $t->redis('ACL', 'SETUSER', 'dify', 'on', '>dify-pw',
                 '~dify:status:*', '+evalsha', '+eval', '+ping', '+select',
                 # what the script calls
                 '+hmget', '+time', '+mget', '+exists', '+set'),
        'OK', 'ACL SETUSER dify';
    is $t->redis('ACL', 'SETUSER', 'other', 'on', '>other-pw',
                 '~other:*', '+evalsha', '+eval', '+ping', '+select',
                 '+hmget', '+time', '+mget', '+exists', '+set'),
        'OK', 'ACL SETUSER other (no access to the limiter\'s keys)';

    $t->start_nginx(workers => $WORKERS, main => $MAIN,
        http => http_conf("$DEFAULT user=dify password=dify-pw"));
    warm($t);

    for my $mode (qw(deny allow local)) {
        my $key = fresh_key("acl$mode");
        my @r = map { patch($t, $key, prefix => "/$mode/v1") } 1 .. 4;
        is statuses(@r), '200 200 200 429',
            "$mode: limited by Redis as user dify";
        is outcomes(@r), 'passed passed passed limited', "$mode: no fallback";
        ok $t->redis('EXISTS', tat_key($key)), "$mode: state written";
    }
    my $clients = $t->redis('CLIENT', 'LIST');
    like $clients, qr/\buser=dify\b/, 'nginx is connected as dify';

    # the user's password is wrong
    reconfigure($t, workers => $WORKERS, main => $MAIN,
        http => http_conf("$DEFAULT user=dify password=nope"));
    check_fallbacks($t, 'ACL user, wrong password');

    # a user that may not touch the keys: error replies (NOPERM)
    reconfigure($t, workers => $WORKERS, main => $MAIN,
        http => http_conf("$DEFAULT user=other password=other-pw"));
    sleep 0.3;
    my $mark = $t->log_mark;
    check_fallbacks($t, 'ACL user without key access');
    like $t->error_log_since($mark), qr/NOPERM/, 'the error reply is logged';

    # and back
    reconfigure($t, workers => $WORKERS, main => $MAIN,
        http => http_conf("$DEFAULT user=dify password=dify-pw"));
    recovers($t, 'right user again', within => DifyTest::timeout(10));
    unlike $t->error_log, qr/dify-pw|other-pw|admin-pw/, 'no password logged';
    $t->done;
};

# ---------------------------------------------------------------------------
scenario 'db=N' => sub {
    my $t = DifyTest->new;
    $t->start_redis;
    $t->start_nginx(workers => $WORKERS, main => $MAIN, http => http_conf("$DEFAULT db=5"));
    recovers($t, 'warm-up', within => DifyTest::timeout(10), db => 5);

    for my $mode (qw(deny allow local)) {
        my $key = fresh_key("db$mode");
        my @r = map { patch($t, $key, prefix => "/$mode/v1") } 1 .. 4;
        is statuses(@r), '200 200 200 429', "$mode: limited by Redis";
        is outcomes(@r), 'passed passed passed limited', "$mode: no fallback";

        my $tk = tat_key($key);
        my @db5 = split /\n/, $t->redis_cli('-n', 5, '--scan');
        my @db0 = split /\n/, $t->redis_cli('-n', 0, '--scan');
        ok((grep { $_ eq $tk } @db5), "$mode: the state is in db 5");
        ok(!(grep { $_ eq $tk } @db0), "$mode: and not in db 0");
    }

    # overrides are read from db 5 too
    my $k2 = fresh_key('db');
    $t->redis_cli('-n', 0, 'HSET', limit_key($k2), 'blocked', '1');
    is patch($t, $k2, prefix => '/deny/v1')->{status}, 200,
        'an override in db 0 is ignored';
    $t->redis_cli('-n', 5, 'HSET', limit_key($k2), 'blocked', '1');
    is patch($t, $k2, prefix => '/deny/v1')->{status}, 403,
        'an override in db 5 applies';
    $t->done;
};

scenario 'db out of range (SELECT fails)' => sub {
    my $t = DifyTest->new;
    $t->start_redis;
    $t->start_nginx(workers => $WORKERS, main => $MAIN, http => http_conf("$DEFAULT db=99"));
    check_fallbacks($t, 'SELECT 99');
    like $t->error_log, qr/SELECT failed/, 'SELECT failure logged';
    $t->done;
};

done_testing;
