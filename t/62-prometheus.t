#!/usr/bin/perl
#
# conf/prometheus/: the scrape configuration and the alerting rules pass
# "promtool check config" / "check rules", the rules' unit tests pass
# "promtool test rules", and every series they name is one the module
# really exports: a running nginx with the module (and a Redis) is
# scraped after requests that pass, are rejected and are limited, and
# each metric name, each label matcher, each "by (...)" label of the
# rules, and each series of the rules' tests (name, label names, label
# values but instance/job/node) must be in that scrape.  A renamed metric
# or label breaks this test.
#
# promtool: DIFY_PROMTOOL, else promtool in PATH, else the one make test
# extracts from Debian's prometheus package into build/promtool/.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Cwd qw(abs_path);
use Test::More;
use DifyTest qw(uuid route ids_body);
use DifyLimit qw(fresh_key);

DifyTest::require_module();

my $TOP = abs_path("$FindBin::Bin/..");
my $DIR = "$TOP/conf/prometheus";
my $RULES = "$DIR/dify-status-rules.yml";
my $TESTS = "$DIR/dify-status-rules.test.yml";

my ($PROMTOOL) = grep { defined && -x }
    $ENV{DIFY_PROMTOOL}, (map { "$_/promtool" } split /:/, $ENV{PATH}),
    "$TOP/build/promtool/usr/bin/promtool";
plan skip_all => 'no promtool (DIFY_PROMTOOL, PATH, build/promtool/)'
    unless $PROMTOOL;

sub sh {
    my ($cmd) = @_;
    my $out = `$cmd 2>&1`;
    return ($? >> 8, $out);
}

# --- promtool on the shipped files -----------------------------------

my ($rc, $out) = sh("cd '$DIR' && '$PROMTOOL' check config prometheus.yml");
is $rc, 0, 'promtool check config prometheus.yml' or diag $out;
like $out, qr/SUCCESS: 1 rule files found/, 'it loads the rule file';

($rc, $out) = sh("'$PROMTOOL' check rules '$RULES'");
is $rc, 0, 'promtool check rules' or diag $out;

($rc, $out) = sh("cd '$DIR' && '$PROMTOOL' test rules dify-status-rules.test.yml");
is $rc, 0, 'promtool test rules' or diag $out;

my $rules_file = DifyTest::_slurp($RULES);
my $tests = DifyTest::_slurp($TESTS);

# the rules' PromQL: every "expr:", on one line or as a "|" block
my @exprs;
{
    my @l = split /\n/, $rules_file;
    for (my $i = 0; $i < @l; $i++) {
        my ($ind, $e) = $l[$i] =~ /^(\s*)expr:\s*(.*)$/ or next;
        if ($e eq '|') {
            $e = '';
            while ($i + 1 < @l && $l[$i + 1] =~ /^\Q$ind\E\s+\S/) {
                $e .= $l[++$i] . "\n";
            }
        }
        push @exprs, $e;
    }
}
my $rules = join "\n", @exprs;
ok @exprs >= 4, scalar(@exprs) . ' expressions in the rules';
my @alerts = $rules_file =~ /^\s*- alert: (\w+)$/mg;
ok @alerts >= 4, 'alerts: ' . join ', ', @alerts;
for my $a (@alerts) {
    like $tests, qr/^\s*alertname: \Q$a\E$/m, "$a has a unit test";
}
for my $m (qw(dify_status_redis_timeouts_total
              dify_status_fallback_decisions_total
              dify_status_redis_error_replies_total
              dify_status_requests_rejected_total)) {
    like $rules, qr/\b\Q$m\E\b/, "an alert on $m (README's alerts)";
}

# --- the real series -----------------------------------------------------

my $t = DifyTest->new;
$t->start_redis;
$t->start_nginx(
    http => q{
    dify_status_redis %%REDIS%% timeout=500ms;
    server {
        listen 127.0.0.1:%%PORT%%;
        location /v1 {
            dify_status on;
            dify_status_limit rate=1r/m burst=1;
            proxy_pass http://upstream;
        }
        location = /metrics {
            dify_status_metrics;
        }
    }
    });

my %H = (Authorization => 'Bearer ' . fresh_key('prom'),
         'Content-Type' => 'application/json');
my $body = ids_body(uuid(2));
my %seen;
for (1 .. 3) {
    my $r = $t->request('PATCH', route(uuid(1), 'enable'), headers => \%H,
                        body => $body);
    $seen{ $r->{status} }++;
}
my $r = $t->request('PATCH', route(uuid(1), 'explode'), headers => \%H,
                    body => $body);
$seen{ $r->{status} }++;
ok $seen{200} && $seen{429} && $seen{400},
    'traffic: passed, limited, rejected (' . join(' ', map { "$_=$seen{$_}" }
                                              sort keys %seen) . ')';

$r = $t->request('GET', '/metrics');
is $r->{status}, 200, 'scraped /metrics';
my $scrape = $r->{body};
DifyTest::_spew($t->dir . '/scrape.txt', $scrape);

($rc, $out) = sh("'$PROMTOOL' check metrics < '" . $t->dir . "/scrape.txt'");
is $rc, 0, 'promtool check metrics: the exposition lints clean' or diag $out;

# name => [ { label => value } ... ]; histograms also under their base name
my %series;
for (split /\n/, $scrape) {
    next if /^#/ || !/\S/;
    my ($name, $labels) = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? \S+$/ or next;
    my %l = ($labels // '') =~ /(\w+)="((?:[^"\\]|\\.)*)"/g;
    push @{ $series{$name} }, \%l;
    if ($name =~ /^(.+)_(?:bucket|sum|count)$/) {
        push @{ $series{$1} }, \%l;
    }
}
ok %series, 'the scrape has series: ' . scalar(keys %series) . ' names';

sub exported {
    my ($name, $want, $name_only) = @_;
    my $s = $series{$name} or return 0;
    for my $l (@$s) {
        my $ok = 1;
        for my $k (keys %$want) {
            next if $k eq 'instance' || $k eq 'job';
            if (!exists $l->{$k}) { $ok = 0; last }
            next if $name_only->{$k};
            if ($l->{$k} ne $want->{$k}) { $ok = 0; last }
        }
        return 1 if $ok;
    }
    return 0;
}

# every metric of the rules, with its matchers and its "by" labels
my %names = map { $_ => 1 } $rules =~ /\b(dify_status_[a-z_]+)\b/g;
ok %names, 'the rules name ' . scalar(keys %names) . ' metrics';
for my $n (sort keys %names) {
    ok $series{$n}, "rules: $n is exported";
}
while ($rules =~ /\b(dify_status_[a-z_]+)\{([^}]*)\}/g) {
    my ($n, $m) = ($1, $2);
    my %want = $m =~ /(\w+)="([^"]*)"/g;
    ok exported($n, \%want, {}), "rules: $n\{$m\} is exported";
}
while ($rules =~ /by \(([^)]*)\) \((?:rate|increase)?\(?(dify_status_[a-z_]+)/g) {
    my ($by, $n) = ($1, $2);
    my %want = map { $_ => '' } split /\s*,\s*/, $by;
    ok exported($n, \%want, { map { $_ => 1 } keys %want }),
        "rules: $n has the labels of by ($by)";
}

# every series the unit tests feed the rules
while ($tests =~ /series: '(dify_status_[a-z_]+)\{([^}]*)\}'/g) {
    my ($n, $m) = ($1, $2);
    my %want = $m =~ /(\w+)="([^"]*)"/g;
    ok exported($n, \%want, { node => 1 }),
        "rules' tests: $n\{$m\} is a series the module exports";
}

$t->done;
done_testing;
