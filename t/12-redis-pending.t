#!/usr/bin/perl
#
# Requests whose Redis reply is pending when something else happens: the
# client goes away, nginx is reloaded, nginx is stopped gracefully.  Redis
# is held with SIGSTOP so that the reply is certainly pending.  Nothing may
# crash ("exited on signal"), nothing may be logged at alert level (open
# sockets left, double close), requests still open must be answered, and
# the workers must go on using Redis afterwards.
#
# In valgrind mode (DIFY_SANITIZE=valgrind) nginx is a single process
# ("master_process off"), ~10x slower: the module's timeouts and the
# waits derived from them are scaled by DifyTest::slow(); there is no
# reload (nginx 1.22 itself crashes on a second SIGHUP in that mode), so
# the reload scenario is skipped; and SIGQUIT makes a single process exit
# at once, without the graceful shutdown of a worker, so the answers to
# the requests pending at a graceful stop are not checked there (the stop
# itself still runs, with commands pending, under valgrind).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time sleep);
use DifyTest qw(uuid route envelope);
use DifyLimit qw(fresh_key key_hash tat_key limit_key patch patch_bytes
                 send_pending wait_for upstream_for rl);

DifyTest::require_module();

my $MAIN = "worker_rlimit_core 1g;\nworking_directory %%DIR%%;";

my $VG = DifyTest->valgrind;
my $SLOW = $VG ? DifyTest::slow() : 1;
sub ms { return $_[0] * $SLOW }

sub conf {
    my (%o) = @_;
    my $timeout = ms($o{timeout} // 3000);
    my $connect = ms(200);
    my $fallback = $o{fallback} // 'deny';
    return qq{
    dify_status_redis %%REDIS%% timeout=${timeout}ms connect_timeout=${connect}ms;
    log_format pend '\$pid \$status \$dify_status \$dify_status_key';
    server {
        listen 127.0.0.1:%%PORT%%;
        listen 127.0.0.1:%%H2PORT%% http2;
        access_log %%DIR%%/pend.log pend;
        add_header X-Dify-Status \$dify_status always;
        location /v1/ {
            dify_status on;
            dify_status_limit rate=5 r/h;
            dify_status_redis_fallback $fallback;
            proxy_pass http://upstream;
        }
    }
};
}

sub no_crash {
    my ($t, $what) = @_;
    my $log = $t->error_log;
    unlike $log, qr/exited on signal/, "$what: no worker crashed";
    unlike $log, qr/\[(?:alert|crit|emerg)\]/, "$what: no alert";
}

# Redis decides again, on every worker
sub on_redis {
    my ($t, $what, $n) = @_;
    $n //= 4;
    my $row = 0;
    my $ok = wait_for(DifyTest::timeout(3), sub {
        my $k = fresh_key('probe');
        my $r = patch($t, $k);
        if ($r->{status} == 200
            && ($r->{headers}{'x-dify-status'} // '') eq 'passed'
            && $t->redis('EXISTS', tat_key($k)))
        {
            return ++$row >= $n;
        }
        $row = 0;
        return 0;
    });
    ok $ok, "$what: requests are decided by Redis again";
    $t->upstream_clear;
}

sub pend_log {
    my ($t) = @_;
    return map { [ split / / ] }
        split /\n/, DifyTest::_slurp($t->dir . '/pend.log');
}

sub warm { on_redis($_[0], 'warm-up', 2) }

# a subtest that reports a die as a failure (with its message) instead of
# ending the file; DIFY_ONLY=regex runs only the matching ones
sub scenario {
    my ($name, $code) = @_;
    return if defined $ENV{DIFY_ONLY} && $name !~ /$ENV{DIFY_ONLY}/;
    subtest $name => sub {
        eval { $code->(); 1 } or fail("died: $@");
    };
}

# "nginx -s reload" with the same file: waits for the new workers only
# (DifyTest::reload also waits for the old ones to exit, which they do
# only once their pending requests are done)
sub hup {
    my ($t, $workers) = @_;
    my $mark = $t->log_mark;
    $t->signal_nginx('HUP');
    ok wait_for(DifyTest::timeout(10), sub {
            my $l = $t->error_log_since($mark);
            my $n = () = $l =~ /start worker process \d+/g;
            $l =~ /reconfiguring/ && $n >= $workers;
        }), 'reloaded (SIGHUP), new workers started';
}

# ---------------------------------------------------------------------------
scenario 'client aborts while the Redis reply is pending' => sub {
    my $t = DifyTest->new;
    $t->start_redis;
    $t->start_nginx(workers => 1, main => $MAIN, http => conf(timeout => 2000));
    warm($t);

    # aborted, then the reply comes
    $t->pause_redis;
    my @keys = map { fresh_key('abort') } 1 .. 5;
    my @c = map { send_pending($t, $_) } @keys;
    sleep 0.3;
    $_->close for @c;
    sleep 0.3;
    $t->resume_redis;
    sleep 0.3;

    my @aborted = grep { $_->[1] == 499 } pend_log($t);
    is scalar(@aborted), 5, 'nginx saw 5 requests closed by the client (499)';
    is scalar(map { upstream_for($t, $_) } @keys), 0,
        'none of them reached the upstream';
    no_crash($t, 'reply after abort');
    on_redis($t, 'after the aborts');

    # aborted, then the timer would have fired, then the reply comes
    $t->pause_redis;
    @c = map { send_pending($t, fresh_key('abort2')) } 1 .. 3;
    sleep 0.2;
    $_->close for @c;
    sleep 2.5 * $SLOW;              # past timeout=2s (scaled)
    $t->resume_redis;
    sleep 0.3;
    no_crash($t, 'abort, timeout, late reply');
    on_redis($t, 'after the late replies');

    # some abort, some wait: the waiting ones get their answer
    $t->pause_redis;
    my @stay = map { send_pending($t, fresh_key('stay')) } 1 .. 3;
    @c = map { send_pending($t, fresh_key('go')) } 1 .. 3;
    sleep 0.2;
    $_->close for @c;
    sleep 0.2;
    $t->resume_redis;
    my @r = map { DifyLimit::_read($_, $_->{t0}, DifyTest::timeout(5)) } @stay;
    is join(' ', map { $_->{status} } @r), '200 200 200',
        'the requests still open are answered';
    is join(' ', map { $_->{headers}{'x-dify-status'} // '-' } @r),
        'passed passed passed', 'by Redis';
    no_crash($t, 'mixed');

    # aborted while the body is still being read
    my $c = $t->connect;
    my $bytes = patch_bytes(fresh_key('body'));
    $c->send(substr $bytes, 0, length($bytes) - 5);
    sleep 0.2;
    $c->close;
    sleep 0.2;
    no_crash($t, 'abort during the body');
    $t->done;
};

scenario 'HTTP/2: stream reset, connection closed while the reply is pending' => sub {
    my $t = DifyTest->new;
    $t->start_redis;
    $t->start_nginx(workers => 1, main => $MAIN, http => conf(timeout => 2000));
    warm($t);

    my @h2req = (headers => [ 'authorization' => 'Bearer ' . fresh_key('h2'),
                              'content-type' => 'application/json' ],
                 body => DifyTest::ids_body(uuid(2)));
    my $path = route(uuid(1), 'enable');

    $t->pause_redis;

    # RST_STREAM (CANCEL) on a connection that stays open
    my $h = $t->h2_connect;
    my $r = $h->request('PATCH', $path, @h2req, timeout => 0.3);
    ok $r->{incomplete}, 'no answer while Redis is stopped';
    $h->_send(DifyTest::H2::_frame(3, 0, $r->{stream}, pack 'N', 8));

    # and a connection closed with a stream pending
    my $h2 = $t->h2_connect;
    my $r2 = $h2->request('PATCH', $path, @h2req, timeout => 0.3);
    ok $r2->{incomplete}, 'no answer while Redis is stopped';
    $h2->close;

    sleep 0.3;
    $t->resume_redis;
    sleep 0.3;
    no_crash($t, 'HTTP/2 aborts');

    # the first connection still serves
    $r = $h->request('PATCH', $path, @h2req, timeout => DifyTest::timeout(5));
    is $r->{status}, 200, 'a new stream on the same connection is answered';
    is $r->{headers}{'x-dify-status'}, 'passed', 'by Redis';
    $h->close;
    on_redis($t, 'after the HTTP/2 aborts');
    $t->done;
};

# ---------------------------------------------------------------------------
scenario 'reload while replies are pending' => sub {
    plan skip_all => 'valgrind mode: a single process, no reload (SIGHUP '
        . 'with master_process off crashes nginx 1.22 itself)' if $VG;
    my $t = DifyTest->new;
    $t->start_redis;
    $t->start_nginx(workers => 2, main => $MAIN, http => conf());
    warm($t);
    my @old = $t->worker_pids;

    # the reply comes after the reload
    $t->pause_redis;
    my @keys = map { fresh_key('reload') } 1 .. 6;
    my @c = map { send_pending($t, $_) } @keys;
    sleep 0.3;
    hup($t, 2);
    sleep 0.3;
    $t->resume_redis;
    my @r = map { DifyLimit::_read($_, $_->{t0}, DifyTest::timeout(10)) } @c;
    is join(' ', map { $_->{status} } @r), join(' ', (200) x 6),
        'every pending request answered'
        or diag join ' ', map { sprintf '%.2fs', $_->{elapsed} } @r;
    is join(' ', map { $_->{headers}{'x-dify-status'} // '-' } @r),
        join(' ', ('passed') x 6), 'by Redis';
    is scalar(map { upstream_for($t, $_) } @keys), 6, 'and passed upstream';

    ok wait_for(DifyTest::timeout(5), sub {
            !grep { !DifyTest::_is_dead($_) } @old }),
        'the old workers exited';
    no_crash($t, 'reload, then reply');
    on_redis($t, 'after the reload');

    # no reply before the old workers' timeout: the fallback answers
    @old = $t->worker_pids;
    $t->pause_redis;
    @c = map { send_pending($t, fresh_key('reload2')) } 1 .. 4;
    sleep 0.3;
    hup($t, 2);
    @r = map { DifyLimit::_read($_, $_->{t0}, DifyTest::timeout(10)) } @c;
    is join(' ', map { $_->{status} } @r), '503 503 503 503',
        'answered by the fallback (deny) at the timeout';
    ok !(grep { $_->{elapsed} > DifyTest::timeout(5) } @r),
        'within the timeout, not the shutdown timeout'
        or diag join ' ', map { sprintf '%.2fs', $_->{elapsed} } @r;
    ok wait_for(DifyTest::timeout(5), sub {
            !grep { !DifyTest::_is_dead($_) } @old }),
        'the old workers exited while Redis was still hung';
    $t->resume_redis;
    no_crash($t, 'reload, timeout');
    on_redis($t, 'after the second reload');
    $t->done;
};

# ---------------------------------------------------------------------------
scenario 'graceful stop while replies are pending, then the reply' => sub {
    my $t = DifyTest->new;
    $t->start_redis;
    $t->start_nginx(workers => 2, main => $MAIN, http => conf());
    warm($t);

    $t->pause_redis;
    my @c = map { send_pending($t, fresh_key('quit')) } 1 .. 4;
    sleep 0.3;
    $t->signal_nginx('QUIT');
    sleep 0.3;
    $t->resume_redis;
    my @r = map { DifyLimit::_read($_, $_->{t0}, DifyTest::timeout(10)) } @c;
    SKIP: {
        skip 'valgrind mode: a single process exits at once on SIGQUIT, '
            . 'no graceful shutdown waits for the pending requests', 2
            if $VG;
        is join(' ', map { $_->{status} } @r), '200 200 200 200',
            'every pending request answered';
        is join(' ', map { $_->{headers}{'x-dify-status'} // '-' } @r),
            'passed passed passed passed', 'by Redis';
    }
    ok wait_for(DifyTest::timeout(5), sub {
            DifyTest::_is_dead($t->nginx_pid) }), 'nginx exited';
    no_crash($t, 'quit, then reply');
    $t->done;
};

scenario 'graceful stop while Redis stays hung' => sub {
    my $t = DifyTest->new;
    $t->start_redis;
    $t->start_nginx(workers => 2, main => $MAIN,
                    http => conf(fallback => 'allow'));
    warm($t);

    $t->pause_redis;
    my @keys = map { fresh_key('quit2') } 1 .. 4;
    my @c = map { send_pending($t, $_) } @keys;
    sleep 0.3;
    my $t0 = time;
    $t->signal_nginx('QUIT');
    my @r = map { DifyLimit::_read($_, $_->{t0}, DifyTest::timeout(10)) } @c;
    SKIP: {
        skip 'valgrind mode: a single process exits at once on SIGQUIT, '
            . 'no graceful shutdown waits for the pending requests', 2
            if $VG;
        is join(' ', map { $_->{status} } @r), '200 200 200 200',
            'answered by the fallback (allow) at the timeout';
        is scalar(map { upstream_for($t, $_) } @keys), 4,
            'and passed upstream';
    }
    ok wait_for(DifyTest::timeout(5), sub {
            DifyTest::_is_dead($t->nginx_pid) }),
        'nginx exited with Redis still hung';
    cmp_ok time - $t0, '<', DifyTest::timeout(8),
        'well before worker_shutdown_timeout';
    $t->resume_redis;
    no_crash($t, 'quit, Redis hung');
    $t->done;
};

# worker_shutdown_timeout closes the Redis connection and the requests in
# the same pass, the Redis one often first: its commands must not be freed
# behind the requests, which cancel them when closed (a use after free
# under ASan before the fix)
scenario 'worker_shutdown_timeout while replies are pending' => sub {
    plan skip_all => 'valgrind mode: a single process exits at once on '
        . 'SIGQUIT, no worker_shutdown_timeout' if $VG;
    my $t = DifyTest->new;
    $t->start_redis;
    $t->start_nginx(workers => 1,
                    main => "$MAIN\nworker_shutdown_timeout 1s;",
                    http => conf(timeout => 20000));
    warm($t);

    $t->pause_redis;
    my @c = map { send_pending($t, fresh_key('wst')) } 1 .. 4;
    sleep 0.3;
    $t->signal_nginx('QUIT');
    ok wait_for(DifyTest::timeout(8), sub {
            DifyTest::_is_dead($t->nginx_pid) }),
        'nginx exited at worker_shutdown_timeout, Redis still hung';
    $t->resume_redis;
    no_crash($t, 'worker_shutdown_timeout');
    $t->done;
};

done_testing;
