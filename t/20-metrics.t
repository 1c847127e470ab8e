#!/usr/bin/perl
#
# dify_status_metrics: the Prometheus text exposition format (0.0.4),
# checked by a strict parser written here; the counters move as expected
# after known requests, are summed over the workers, and survive a
# reload.  The limiter's counters need a Redis (skipped without one).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use DifyTest qw(uuid route ids_body);
use DifyLimit qw(fresh_key wait_for);

DifyTest::require_module();

my $P = 'dify_status_';
my $CT = 'text/plain; version=0.0.4; charset=utf-8';

my %FAMILIES = (
    map({ ("${P}$_" => 'counter') } qw(
        requests_checked_total requests_passed_total
        requests_rejected_total requests_limited_total
        requests_limited_cached_total requests_dry_run_limited_total
        redis_commands_total redis_errors_total redis_timeouts_total
        redis_reconnects_total redis_noscript_total
        redis_resolve_failures_total redis_tls_failures_total
        redis_error_replies_total fallback_decisions_total
        redis_moved_total redis_ask_total
        redis_topology_refreshes_total redis_failovers_total
        redis_decisions_total redis_node_commands_total
        redis_cluster_splits_total)),
    "${P}redis_rtt_seconds" => 'histogram',
);

my @LE = qw(0.0001 0.00025 0.0005 0.001 0.0025 0.005 0.01 0.025 0.05 0.1
            0.25 +Inf);

my @FALLBACK = ([ allow => 'passed' ], [ deny => 'denied' ],
                [ local => 'passed' ], [ local => 'limited' ]);


# ------------------------------------------------------------------
# a strict parser of the text format, version 0.0.4

my $NAME = qr/[a-zA-Z_:][a-zA-Z0-9_:]*/;
my $LABEL = qr/[a-zA-Z_][a-zA-Z0-9_]*/;
my $FLOAT = qr/[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|[+-]Inf|NaN/;

sub _num {
    my ($s) = @_;
    return 9**9**9 if $s eq '+Inf';
    return -9**9**9 if $s eq '-Inf';
    return $s + 0;
}

sub _labels {
    my ($s, $err) = @_;
    my (%l, @order);
    while (length $s) {
        $s =~ s/^($LABEL)="((?:[^"\\\n]|\\[\\"n])*)"//
            or return $err->("bad label set at '$s'");
        my ($n, $v) = ($1, $2);
        $v =~ s/\\(.)/$1 eq 'n' ? "\n" : $1/ge;
        return $err->("label name $n is reserved") if $n =~ /^__/;
        return $err->("label $n repeated") if exists $l{$n};
        $l{$n} = $v;
        push @order, $n;
        last if $s eq '';
        $s =~ s/^,// or return $err->("no comma at '$s'");
    }
    return (\%l, \@order);
}

# returns { families => { name => { type, help, samples => [...] } },
#           order => [ family names ], samples => [...] } or dies
sub parse_prom {
    my ($text) = @_;
    my (%fam, @order, @samples, %seen, %closed);
    my $current = '';
    my $ln = 0;

    die "empty exposition\n" unless length $text;
    die "no final newline\n" unless $text =~ /\n\z/;

    for my $line (split /\n/, $text, -1) {
        $ln++;
        last if $ln > ($text =~ tr/\n//);
        my $err = sub { die "line $ln: $_[0]: '$line'\n" };

        $err->('empty line') if $line eq '';
        $err->('carriage return') if $line =~ /\r/;

        if ($line =~ /^#/) {
            my ($kw, $name, $rest) = $line =~ /^# (HELP|TYPE) ($NAME) (.*)$/
                or $err->('a comment that is neither HELP nor TYPE');
            my $f = $fam{$name} //= { samples => [] };
            $err->("$kw after samples of the family")
                if @{ $f->{samples} } || $closed{$name};
            if ($kw eq 'HELP') {
                $err->('second HELP') if defined $f->{help};
                $err->('bad escape in HELP')
                    if $rest =~ /\\(?![\\n])/;
                $f->{help} = $rest;
            } else {
                $err->('second TYPE') if defined $f->{type};
                $rest =~ /^(counter|gauge|histogram|summary|untyped)$/
                    or $err->("unknown type '$rest'");
                $f->{type} = $rest;
            }
            if ($current ne $name) {
                $closed{$current} = 1 if $current ne '';
                $current = $name;
                push @order, $name unless grep { $_ eq $name } @order;
            }
            next;
        }

        my ($name, $lbl, $value, $ts) =
            $line =~ /^($NAME)(?:\{(.*)\})? ($FLOAT)(?: (-?\d+))?$/
            or $err->('not a sample line');

        my ($labels, $lorder) = defined $lbl ? _labels($lbl, $err)
                                             : ({}, []);

        # the family: the name itself, or a histogram's / summary's
        my $family = $name;
        if (!($fam{$name} && $fam{$name}{type})
            && $name =~ /^(.*)_(bucket|sum|count)$/)
        {
            my ($base, $suffix) = ($1, $2);
            my $type = $fam{$base} ? $fam{$base}{type} // '' : '';
            if ($type eq 'histogram' || $type eq 'summary') {
                $family = $base;
                $err->('_bucket in a summary')
                    if $suffix eq 'bucket' && $type eq 'summary';
            }
        }
        my $f = $fam{$family};
        $err->('sample with no preceding TYPE')
            unless $f && defined $f->{type};
        $err->('samples of the family are not contiguous')
            if $closed{$family} || $current ne $family;

        my $key = $name . '{'
            . join(',', map { "$_=$labels->{$_}" } sort keys %$labels) . '}';
        $err->('duplicate sample') if $seen{$key}++;

        my $s = { name => $name, labels => $labels, value => $value,
                  num => _num($value), family => $family, line => $ln };
        push @{ $f->{samples} }, $s;
        push @samples, $s;

        if ($f->{type} eq 'counter' || $f->{type} eq 'histogram') {
            $err->('negative or NaN value')
                unless $value ne 'NaN' && $s->{num} >= 0;
        }
        if ($f->{type} eq 'histogram') {
            if ($name eq "${family}_bucket") {
                $err->('bucket without le') unless exists $labels->{le};
                $err->('bad le') unless $labels->{le} =~ /^$FLOAT$/;
                $err->('bucket count not an integer')
                    unless $value =~ /^\d+$/;
            } elsif ($name eq "${family}_count") {
                $err->('count not an integer') unless $value =~ /^\d+$/;
            } elsif ($name ne "${family}_sum") {
                $err->('a histogram sample other than _bucket, _sum, '
                       . '_count');
            }
        }
    }

    # per family: HELP and TYPE present; histograms consistent
    for my $name (@order) {
        my $f = $fam{$name};
        die "family $name has no TYPE\n" unless defined $f->{type};
        die "family $name has no HELP\n" unless defined $f->{help};
        next unless $f->{type} eq 'histogram';

        my %sets;
        for my $s (@{ $f->{samples} }) {
            my %l = %{ $s->{labels} };
            delete $l{le} if $s->{name} eq "${name}_bucket";
            my $k = join ',', map { "$_=$l{$_}" } sort keys %l;
            my $set = $sets{$k} //= { buckets => [] };
            if ($s->{name} eq "${name}_bucket") {
                push @{ $set->{buckets} }, $s;
            } elsif ($s->{name} eq "${name}_sum") {
                $set->{sum} = $s;
            } else {
                $set->{count} = $s;
            }
        }
        die "histogram $name has no samples\n" unless %sets;
        for my $k (sort keys %sets) {
            my $set = $sets{$k};
            my @b = @{ $set->{buckets} };
            die "histogram $name\{$k} has no buckets\n" unless @b;
            die "histogram $name\{$k} has no _sum\n" unless $set->{sum};
            die "histogram $name\{$k} has no _count\n" unless $set->{count};
            die "histogram $name\{$k}: the last bucket is not +Inf\n"
                unless $b[-1]{labels}{le} eq '+Inf';
            for my $i (1 .. $#b) {
                die "histogram $name\{$k}: le not increasing at line "
                    . "$b[$i]{line}\n"
                    unless _num($b[$i]{labels}{le})
                         > _num($b[ $i - 1 ]{labels}{le});
                die "histogram $name\{$k}: buckets not cumulative at line "
                    . "$b[$i]{line}\n"
                    unless $b[$i]{num} >= $b[ $i - 1 ]{num};
            }
            die "histogram $name\{$k}: +Inf bucket $b[-1]{value} != _count "
                . "$set->{count}{value}\n"
                unless $b[-1]{num} == $set->{count}{num};
        }
    }

    return { families => \%fam, order => \@order, samples => \@samples };
}

# the parser rejects what it must
{
    my $ok = "# HELP a_total A.\n# TYPE a_total counter\na_total 1\n";
    ok eval { parse_prom($ok); 1 }, 'parser: a minimal exposition' or diag $@;
    my %bad = (
        'no TYPE'        => "a_total 1\n",
        'no final \n'    => "# HELP a A.\n# TYPE a counter\na 1",
        'negative'       => "# HELP a A.\n# TYPE a counter\na -1\n",
        'bad value'      => "# HELP a A.\n# TYPE a counter\na x\n",
        'bad labels'     => "# HELP a A.\n# TYPE a counter\na{b=\"c} 1\n",
        'duplicate'      => "# HELP a A.\n# TYPE a counter\na 1\na 2\n",
        'interleaved'    => "# HELP a A.\n# TYPE a counter\na{x=\"1\"} 1\n"
                          . "# HELP b B.\n# TYPE b counter\nb 1\n"
                          . "a{x=\"2\"} 1\n",
        'not cumulative' => "# HELP h H.\n# TYPE h histogram\n"
                          . "h_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\n"
                          . "h_sum 1\nh_count 1\n",
        '+Inf != count'  => "# HELP h H.\n# TYPE h histogram\n"
                          . "h_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\n"
                          . "h_sum 1\nh_count 3\n",
        'no +Inf'        => "# HELP h H.\n# TYPE h histogram\n"
                          . "h_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",
    );
    for my $k (sort keys %bad) {
        ok !eval { parse_prom($bad{$k}); 1 }, "parser rejects: $k";
    }
}


# ------------------------------------------------------------------
# helpers

sub scrape {
    my ($t, %o) = @_;
    my $r = $t->http('GET', '/metrics', port => $o{port});
    is $r->{status}, 200, 'metrics: 200' or return;
    my $p = eval { parse_prom($r->{body}) };
    ok $p, 'metrics: parses as the text format' or diag "$@\n$r->{body}";
    return $p;
}

# a sample's value, 0 when the label set is absent
sub val {
    my ($p, $name, %l) = @_;
    return undef unless $p;
    for my $s (@{ $p->{samples} }) {
        next unless $s->{name} eq $name;
        next unless keys %{ $s->{labels} } == keys %l;
        next if grep { ($s->{labels}{$_} // "\0") ne $l{$_} } keys %l;
        return $s->{num};
    }
    return 0;
}

sub c { my ($p, $n, %l) = @_; return val($p, "${P}$n", %l) }

sub rejected {
    my ($p, $status, $code) = @_;
    return c($p, 'requests_rejected_total', status => $status,
             code => $code);
}

sub fallback {
    my ($p, $mode, $result) = @_;
    return c($p, 'fallback_decisions_total', mode => $mode,
             result => $result);
}

sub rtt_count { return val($_[0], "${P}redis_rtt_seconds_count") }
sub rtt_sum { return val($_[0], "${P}redis_rtt_seconds_sum") }

# every sample of $x is at least as large in $y
sub not_less {
    my ($x, $y, $name) = @_;
    my @less;
    for my $s (@{ $x->{samples} }) {
        next if ($x->{families}{ $s->{name} }{type} // '') eq 'gauge';
        my $v = val($y, $s->{name}, %{ $s->{labels} });
        push @less, "$s->{name} $s->{value} -> $v" if $v < $s->{num};
    }
    ok !@less, $name or diag join "\n", @less;
}

my $KEY = 'dataset-metricsKEY0123456789abcdef';
my $JSON = [ 'Content-Type' => 'application/json' ];
my $AUTH = [ Authorization => "Bearer $KEY" ];

sub patch {
    my ($t, %o) = @_;
    my $path = route($o{dataset} // uuid(1), $o{action} // 'enable',
                     $o{prefix} // '/v1');
    my @h = (@{ $o{auth} // $AUTH }, @{ $o{ct} // $JSON });
    return $t->http('PATCH', $path, headers => \@h,
                    body => $o{body} // ids_body(uuid(2)),
                    port => $o{port});
}


# ------------------------------------------------------------------
# without Redis: the format, the request counters, the sum over
# workers, HEAD and other methods, reload

my $t = DifyTest->new;

my $CONF = q{
    log_format metrics '$pid $dify_status';

    server {
        listen 127.0.0.1:%%PORT%% reuseport;
        server_name localhost;

        location /v1/ {
            dify_status on;
            dify_status_max_body_size 1k;
            access_log %%DIR%%/metrics-access.log metrics;
            proxy_pass http://upstream;
        }

        location = /metrics {
            dify_status_metrics;
        }
    }
};

$t->start_nginx(http => $CONF, workers => 2);

my $r = $t->http('GET', '/metrics');
is $r->{status}, 200, 'GET /metrics';
is $r->{headers}{'content-type'}, $CT, 'Content-Type of the 0.0.4 format';
is $r->{headers}{'content-length'}, length $r->{body},
    'Content-Length is the body length';

my $p0 = eval { parse_prom($r->{body}) };
ok $p0, 'a fresh exposition parses' or diag "$@\n$r->{body}";
$p0 or BAIL_OUT('the exposition does not parse');

for my $name (sort keys %FAMILIES) {
    my $f = $p0->{families}{$name};
    ok $f && ($f->{type} // '') eq $FAMILIES{$name},
        "family $name is a $FAMILIES{$name}";
    ok $f && length($f->{help} // ''), "family $name has a HELP text";
}
is_deeply [ sort grep { /^\Q$P\E/ } @{ $p0->{order} } ],
    [ sort keys %FAMILIES ], 'no other families';
is scalar(grep { !/^\Q$P\E/ } @{ $p0->{order} }), 0,
    'every family carries the dify_status_ prefix';

is scalar @{ $p0->{families}{"${P}requests_rejected_total"}{samples} }, 0,
    'no rejected label set before any rejection';
is_deeply [ map { [ @{ $_->{labels} }{qw(mode result)} ] }
            @{ $p0->{families}{"${P}fallback_decisions_total"}{samples} } ],
    \@FALLBACK, 'the four fallback label sets, always';
is_deeply [ map { $_->{labels}{le} }
            grep { $_->{name} =~ /_bucket$/ }
            @{ $p0->{families}{"${P}redis_rtt_seconds"}{samples} } ],
    \@LE, 'rtt buckets in seconds';
is_deeply [ grep { $_->{num} != 0 } @{ $p0->{samples} } ], [],
    'all zero at start';
like $r->{body}, qr/^\Q${P}redis_rtt_seconds_sum\E 0\.000000$/m,
    '_sum in seconds with microsecond digits';

# HEAD and other methods
$r = $t->http('HEAD', '/metrics');
is $r->{status}, 200, 'HEAD /metrics';
is $r->{headers}{'content-type'}, $CT, 'HEAD: Content-Type';
ok $r->{headers}{'content-length'} > 0, 'HEAD: Content-Length';
is $r->{body}, '', 'HEAD: no body';

for my $m (qw(POST PUT PATCH DELETE)) {
    $r = $t->http($m, '/metrics', body => 'x=1');
    is $r->{status}, 405, "$m /metrics: 405";
}
$t->nothing_upstream('/metrics never reaches the upstream');

# known requests, each answered by a known row of the contract
my $p1 = scrape($t);

$r = patch($t);
is $r->{status}, 200, 'a valid request passes';
$r = patch($t, dataset => 'not-a-uuid');
is $r->{status}, 404, 'not_found';
$r = patch($t, auth => []);
is $r->{status}, 401, 'unauthorized: no header';
$r = patch($t, auth => [ Authorization => "Basic $KEY" ]);
is $r->{status}, 401, 'unauthorized: scheme';
$r = patch($t, action => 'bogus');
is $r->{status}, 400, 'invalid_action';
$r = patch($t, ct => [ 'Content-Type' => 'text/plain' ]);
is $r->{status}, 415, 'unsupported_media_type';
$r = patch($t, body => ids_body(map { uuid($_) } 1 .. 100));
is $r->{status}, 413, 'request_entity_too_large';
$r = patch($t, body => '{"document_ids": [');
is $r->{status}, 400, 'bad_request';
$r = patch($t, body => '{"document_ids": ["x"]}');
is $r->{status}, 400, 'invalid_param';

# not checked: another method, another path
$r = $t->http('GET', route(uuid(1), 'enable'), headers => $AUTH);
is $r->{status}, 200, 'GET on the route passes unchecked';
$r = $t->http('PATCH', '/v1/datasets', headers => [ @$AUTH, @$JSON ],
              body => '{}');
is $r->{status}, 200, 'PATCH elsewhere passes unchecked';
$t->upstream_clear;

my $p2 = scrape($t);

is c($p2, 'requests_checked_total') - c($p1, 'requests_checked_total'), 9,
    'checked: +9';
is c($p2, 'requests_passed_total') - c($p1, 'requests_passed_total'), 1,
    'passed: +1';

my @rows = ([ 404, 'not_found', 1 ], [ 401, 'unauthorized', 2 ],
            [ 400, 'invalid_action', 1 ],
            [ 415, 'unsupported_media_type', 1 ],
            [ 413, 'request_entity_too_large', 1 ],
            [ 400, 'bad_request', 1 ], [ 400, 'invalid_param', 1 ]);
for my $row (@rows) {
    my ($st, $code, $n) = @$row;
    is rejected($p2, $st, $code) - rejected($p1, $st, $code), $n,
        "rejected{status=\"$st\",code=\"$code\"}: +$n";
}
is scalar @{ $p2->{families}{"${P}requests_rejected_total"}{samples} },
    scalar @rows, 'only the label sets seen';
for my $n (qw(requests_limited_total requests_limited_cached_total
              requests_dry_run_limited_total redis_commands_total
              redis_errors_total redis_timeouts_total redis_noscript_total))
{
    is c($p2, $n), 0, "$n: still 0 without a limit";
}
is rtt_count($p2), 0, 'no Redis round trip';

# the sum over the workers: reuseport spreads the connections
SKIP: {
    skip 'a single process in valgrind mode', 10 if $t->valgrind;

    my $passed = c($p2, 'requests_passed_total');
    my @w = $t->worker_pids;
    is scalar @w, 2, 'two workers';
    for (1 .. 40) {
        $r = patch($t);
        last if $r->{status} != 200;
    }
    is $r->{status}, 200, '40 more valid requests pass';
    $t->upstream_clear;

    # a log line is written after its answer: wait for all of them
    my %pids;
    wait_for(DifyTest::timeout(5), sub {
        %pids = ();
        open my $fh, '<', $t->dir . '/metrics-access.log' or die $!;
        while (<$fh>) {
            $pids{$1}++ if /^(\d+) passed$/;
        }
        close $fh;
        my $n = 0;
        $n += $_ for values %pids;
        return $n >= $passed + 40;
    });
    ok keys %pids >= 2, 'both workers served passed requests'
        or diag explain \%pids;

    my $p3 = scrape($t);
    is c($p3, 'requests_passed_total'), $passed + 40,
        'passed: +40, the sum over the workers';
    my $logged = 0;
    $logged += $_ for values %pids;
    is c($p3, 'requests_passed_total'), $logged,
        'the same as the access log';
    # a second scrape, wherever it lands, says the same
    is c(scrape($t), 'requests_passed_total'), $passed + 40,
        'every worker sees the sum';
}

# reload: the zone is handed over, the counts carry on
SKIP: {
    skip 'no reload in valgrind mode', 22 if $t->valgrind;

    my $before = scrape($t);
    ok $t->reload(http => $CONF, workers => 2), 'reload';
    my $after = scrape($t);
    not_less($before, $after, 'no counter went back after the reload');
    is c($after, 'requests_checked_total'),
        c($before, 'requests_checked_total'), 'checked kept';
    is c($after, 'requests_passed_total'),
        c($before, 'requests_passed_total'), 'passed kept';

    $r = patch($t, action => 'bogus');
    is $r->{status}, 400, 'a rejection after the reload';
    my $p4 = scrape($t);
    is rejected($p4, 400, 'invalid_action'),
        rejected($before, 400, 'invalid_action') + 1,
        'it adds to the old count';

    # another configuration, one worker: the same zone still
    my $conf2 = $CONF =~ s/max_body_size 1k;/max_body_size 2k;/r;
    ok $t->reload(http => $conf2, workers => 1), 'reload, changed config';
    my $p5 = scrape($t);
    is c($p5, 'requests_checked_total'), c($p4, 'requests_checked_total'),
        'checked kept across a changed config';

    # a reload that fails: the running cycle keeps counting
    my $broken = $CONF =~ s/(dify_status_metrics;)/$1\n dify_status_nope;/r;
    $t->allow_log(qr/unknown directive "dify_status_nope"/);
    ok !$t->reload(http => $broken, workers => 1), 'a reload that fails';
    $r = patch($t, action => 'bogus');
    is $r->{status}, 400, 'a rejection after the failed reload';
    my $p6 = scrape($t);
    is rejected($p6, 400, 'invalid_action'),
        rejected($p5, 400, 'invalid_action') + 1, 'still counted';
    is c($p6, 'requests_checked_total'),
        c($p5, 'requests_checked_total') + 1, 'checked: +1';
}

# nginx -t with the metrics location does not disturb the running zone
my $before_t = scrape($t);
my ($rc, $out) = $t->nginx_t(http => $CONF);
is $rc, 0, 'nginx -t with dify_status_metrics' or diag $out;
is c(scrape($t), 'requests_checked_total'),
    c($before_t, 'requests_checked_total'), 'counts untouched by -t';

$t->stop_nginx;


# ------------------------------------------------------------------
# with Redis: the limiter's counters, the round-trip histogram, the
# fallbacks

SKIP: {
    skip 'no redis-server', 1 unless -x '/usr/bin/redis-server';

    $t->start_redis;

    # a timeout long enough for valgrind: no fallback by accident
    $t->start_nginx(http => qq{
        dify_status_redis %%REDIS%% timeout=${\ DifyTest::timeout(2) }s;

        server {
            listen 127.0.0.1:%%PORT%%;
            server_name localhost;

            location /v1/ {
                dify_status on;
                dify_status_limit rate=1 r/m burst=1;
                proxy_pass http://upstream;
            }

            location /warm/ {
                dify_status on;
                dify_status_limit rate=1 r/m burst=1;
                dify_status_redis_fallback deny;
                proxy_pass http://upstream;
            }

            location /dry/ {
                dify_status on;
                dify_status_limit rate=1 r/m burst=1;
                dify_status_dry_run on;
                proxy_pass http://upstream;
            }

            location /deny/ {
                dify_status on;
                dify_status_limit rate=1 r/m burst=1;
                dify_status_redis_fallback deny;
                proxy_pass http://upstream;
            }

            location /allow/ {
                dify_status on;
                dify_status_limit rate=1 r/m burst=1;
                dify_status_redis_fallback allow;
                proxy_pass http://upstream;
            }

            location /local/ {
                dify_status on;
                dify_status_limit rate=1 r/m burst=1;
                dify_status_redis_fallback local;
                proxy_pass http://upstream;
            }

            location = /metrics {
                dify_status_metrics;
            }
        }
    });

    # wait until the worker is connected to Redis
    # until the worker has its Redis connection and the script is
    # loaded: the warm-up location answers 503 before
    ok wait_for(DifyTest::timeout(10), sub {
        patch($t, prefix => '/warm/v1',
              auth => [ Authorization => 'Bearer ' . fresh_key('w') ])
            ->{status} == 200;
    }), 'the worker is connected to Redis';
    $t->upstream_clear;

    my $q0 = scrape($t);
    my $node = '127.0.0.1:' . $t->redis_port;
    is $q0->{families}{"${P}redis_connections_up"}{type}, 'gauge',
        'redis_connections_up is a gauge';
    is c($q0, 'redis_connections_up', node => $node), 1,
        "redis_connections_up{node=\"$node\"}: the worker's connection";
    my $k1 = fresh_key('m');

    $r = patch($t, auth => [ Authorization => "Bearer $k1" ]);
    is $r->{status}, 200, 'limit: the first request passes';
    $r = patch($t, auth => [ Authorization => "Bearer $k1" ]);
    is $r->{status}, 429, 'limit: the second is limited';
    $r = patch($t, auth => [ Authorization => "Bearer $k1" ]);
    is $r->{status}, 429, 'limit: the third too';
    $t->upstream_clear;

    my $q1 = scrape($t);
    is c($q1, 'requests_passed_total') - c($q0, 'requests_passed_total'), 1,
        'passed: +1';
    is c($q1, 'requests_limited_total') - c($q0, 'requests_limited_total'),
        2, 'limited: +2';
    my $cached = c($q1, 'requests_limited_cached_total')
               - c($q0, 'requests_limited_cached_total');
    ok $cached >= 0 && $cached <= 2, "limited_cached: +$cached, at most +2";
    is rejected($q1, 429, 'too_many_requests')
     - rejected($q0, 429, 'too_many_requests'), 2,
        'rejected{status="429",code="too_many_requests"}: +2';
    my $cmds = c($q1, 'redis_commands_total') - c($q0, 'redis_commands_total');
    ok $cmds >= 3 - $cached, "redis_commands: +$cmds";
    my $rtts = rtt_count($q1) - rtt_count($q0);
    ok $rtts >= 1 && $rtts <= $cmds, "rtt: +$rtts observations";
    ok rtt_sum($q1) > rtt_sum($q0), 'rtt: _sum grew';
    ok rtt_sum($q1) < 10 * rtt_count($q1), 'rtt: _sum is in seconds';
    # a fresh Redis answers the first EVALSHA with NOSCRIPT, an error
    # reply: errors may count it, nothing else went wrong
    my $noscript = c($q1, 'redis_noscript_total')
                 - c($q0, 'redis_noscript_total');
    my $errors = c($q1, 'redis_errors_total') - c($q0, 'redis_errors_total');
    ok $noscript <= 1, "noscript: +$noscript, the script loaded once";
    ok $errors <= $noscript, "errors: +$errors, NOSCRIPT at most";
    is c($q1, 'redis_timeouts_total'), c($q0, 'redis_timeouts_total'),
        'no timeout';

    # dry run: over the limit, passed, counted
    my $k2 = fresh_key('d');
    for (1 .. 2) {
        $r = patch($t, prefix => '/dry/v1',
                   auth => [ Authorization => "Bearer $k2" ]);
        is $r->{status}, 200, "dry run: request $_ passes";
    }
    $t->upstream_clear;
    my $q2 = scrape($t);
    is c($q2, 'requests_dry_run_limited_total')
     - c($q1, 'requests_dry_run_limited_total'), 1, 'dry_run_limited: +1';
    is c($q2, 'requests_passed_total') - c($q1, 'requests_passed_total'), 2,
        'both dry-run requests counted as passed';
    is c($q2, 'requests_limited_total'), c($q1, 'requests_limited_total'),
        'dry run does not count as limited';

    # the fallbacks: Redis gone
    $t->kill_redis;

    my $k3 = fresh_key('f');
    my @auth3 = (auth => [ Authorization => "Bearer $k3" ]);
    ok wait_for(DifyTest::timeout(10), sub {
        patch($t, prefix => '/deny/v1', @auth3)->{status} == 503;
    }), 'fallback deny: 503 once Redis is gone';
    $r = patch($t, prefix => '/allow/v1', @auth3);
    is $r->{status}, 200, 'fallback allow: passes';
    $r = patch($t, prefix => '/local/v1', @auth3);
    is $r->{status}, 200, 'fallback local: the first passes';
    $r = patch($t, prefix => '/local/v1', @auth3);
    is $r->{status}, 429, 'fallback local: the second is limited';
    $t->upstream_clear;

    my $q3 = scrape($t);
    my $denied = fallback($q3, deny => 'denied')
               - fallback($q2, deny => 'denied');
    ok $denied >= 1, "fallback{deny,denied}: +$denied";
    is rejected($q3, 503, 'service_unavailable')
     - rejected($q2, 503, 'service_unavailable'), $denied,
        'as many 503 service_unavailable';
    is fallback($q3, allow => 'passed') - fallback($q2, allow => 'passed'),
        1, 'fallback{allow,passed}: +1';
    is fallback($q3, local => 'passed') - fallback($q2, local => 'passed'),
        1, 'fallback{local,passed}: +1';
    is fallback($q3, local => 'limited')
     - fallback($q2, local => 'limited'), 1, 'fallback{local,limited}: +1';
    is c($q3, 'requests_limited_total'), c($q2, 'requests_limited_total'),
        'a local verdict is not counted as a Redis one';
    my $trouble = sub {
        my ($p) = @_;
        return c($p, 'redis_errors_total') + c($p, 'redis_timeouts_total')
             + c($p, 'redis_reconnects_total');
    };
    ok wait_for(DifyTest::timeout(10), sub {
        my $r = $t->http('GET', '/metrics');
        my $p = eval { parse_prom($r->{body}) } or return 0;
        return $trouble->($p) > $trouble->($q2);
    }), 'the loss of Redis shows in errors, timeouts or reconnects';
    not_less($q0, $q3, 'no counter went back');
    ok wait_for(DifyTest::timeout(10), sub {
        my $r = $t->http('GET', '/metrics');
        my $p = eval { parse_prom($r->{body}) } or return 0;
        return c($p, 'redis_connections_up', node => $node) == 0;
    }), 'redis_connections_up: 0 with Redis gone';
}

$t->done;
done_testing;
