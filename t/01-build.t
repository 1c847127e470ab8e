#!/usr/bin/perl
#
# The module loads into the stock /usr/sbin/nginx, its directives are
# accepted where documented, and invalid values fail `nginx -t` with a
# message that names the directive or the bad value.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use DifyTest;

DifyTest::require_module();

my $t = DifyTest->new;

my $LOC = q{
    location /v1 {
        %s
        proxy_pass http://upstream;
    }
};

sub at {
    my ($context, $directive) = @_;
    return (http => "    $directive\n    server {\n"
                  . "        listen 127.0.0.1:%%PORT%%;\n"
                  . sprintf($LOC, '') . "    }\n")
        if $context eq 'http';
    return (server => "    $directive\n" . sprintf($LOC, ''))
        if $context eq 'server';
    return (server => sprintf($LOC, $directive))
        if $context eq 'location';
    return (main => $directive, server => sprintf($LOC, ''))
        if $context eq 'main';
    die "context $context";
}

sub conf_ok {
    my ($name, %conf) = @_;
    my ($rc, $out) = $t->nginx_t(%conf);
    ok $rc == 0 && $out =~ /test is successful/, $name
        or diag "exit $rc:\n$out";
}

sub conf_fails {
    my ($name, $clear, %conf) = @_;
    my ($rc, $out) = $t->nginx_t(%conf);
    subtest $name => sub {
        isnt $rc, 0, 'nginx -t fails';
        like $out, qr/test failed/, '"test failed"';
        like $out, qr/nginx: \[(?:emerg|warn)\]/, 'an [emerg] message';
        like $out, $clear, 'the message is clear';
        like $out, qr/\.conf:\d+/, 'it names the file and line';
    } or diag "exit $rc:\n$out";
}

# --- the module loads ------------------------------------------------

{
    my ($rc, $out) = $t->nginx_t(server => sprintf($LOC, ''));
    is $rc, 0, 'the module loads into /usr/sbin/nginx (nginx -t passes)'
        or diag $out;
    like $out, qr/syntax is ok/, 'syntax is ok';
    unlike $out, qr/not binary compatible|\[emerg\]|\[alert\]/,
        'no compatibility complaint';

    ($rc, $out) = $t->nginx_t(server => sprintf($LOC, 'dify_status on;'),
                              no_module => 1);
    like $out, qr/unknown directive "dify_status"/,
        'without load_module, dify_status is unknown (the module provides it)';
}

# --- valid values in every documented context --------------------------

my %valid = (
    dify_status               => [ 'on', 'off' ],
    dify_status_max_body_size => [ '1m', '1k', '100', '64k', '10m' ],
    dify_status_max_documents => [ '1000', '0', '1', '100000' ],
    dify_status_document_ids  => [ 'uuid', 'any' ],
    dify_status_duplicate_ids => [ 'allow', 'reject' ],
    dify_status_token_prefix  => [ 'dataset-', 'app-', 'off' ],
);

for my $d (sort keys %valid) {
    for my $v (@{ $valid{$d} }) {
        for my $ctx (qw(http server location)) {
            conf_ok("$d $v; in $ctx", at($ctx, "$d $v;"));
        }
    }
}

conf_ok('all directives together, inherited and overridden',
    http => q{
    dify_status on;
    dify_status_max_body_size 64k;
    dify_status_max_documents 10;
    dify_status_document_ids any;
    dify_status_duplicate_ids reject;

    server {
        listen 127.0.0.1:%%PORT%%;
        dify_status off;
        dify_status_max_documents 0;

        location /v1 {
            dify_status on;
            dify_status_document_ids uuid;
            dify_status_duplicate_ids allow;
            dify_status_max_body_size 1m;
            proxy_pass http://upstream;
        }
    }
});

# --- invalid values ------------------------------------------------------

my @invalid = (
    [ 'dify_status maybe;',        qr/"maybe"|dify_status/ ],
    [ 'dify_status 1;',            qr/"1"|dify_status/ ],
    [ 'dify_status;',              qr/"dify_status"/ ],
    [ 'dify_status on off;',       qr/"dify_status"/ ],

    [ 'dify_status_max_body_size abc;', qr/"abc"|dify_status_max_body_size/ ],
    [ 'dify_status_max_body_size -1;',  qr/"-1"|dify_status_max_body_size/ ],
    [ 'dify_status_max_body_size 1x;',  qr/"1x"|dify_status_max_body_size/ ],
    [ 'dify_status_max_body_size;',     qr/"dify_status_max_body_size"/ ],
    [ 'dify_status_max_body_size 1k 2k;', qr/"dify_status_max_body_size"/ ],

    [ 'dify_status_max_documents abc;', qr/"abc"|dify_status_max_documents/ ],
    [ 'dify_status_max_documents -1;',  qr/"-1"|dify_status_max_documents/ ],
    [ 'dify_status_max_documents 1.5;', qr/"1\.5"|dify_status_max_documents/ ],
    [ 'dify_status_max_documents;',     qr/"dify_status_max_documents"/ ],

    [ 'dify_status_document_ids foo;',  qr/"foo"|dify_status_document_ids/ ],
    [ 'dify_status_document_ids 1;',    qr/"1"|dify_status_document_ids/ ],
    [ 'dify_status_document_ids;',      qr/"dify_status_document_ids"/ ],
    [ 'dify_status_document_ids uuid any;', qr/"dify_status_document_ids"/ ],

    [ 'dify_status_duplicate_ids deny;', qr/"deny"|dify_status_duplicate_ids/ ],
    [ 'dify_status_duplicate_ids yes;',  qr/"yes"|dify_status_duplicate_ids/ ],
    [ 'dify_status_duplicate_ids;',      qr/"dify_status_duplicate_ids"/ ],

    [ 'dify_status_token_prefix "";',    qr/invalid value ""/ ],
    [ 'dify_status_token_prefix;',       qr/"dify_status_token_prefix"/ ],
    [ 'dify_status_token_prefix a b;',   qr/"dify_status_token_prefix"/ ],
);

for my $case (@invalid) {
    my ($d, $re) = @$case;
    conf_fails("$d fails nginx -t", $re, at('location', $d));
}

# the Redis side's, at http level
for my $case (
    [ 'dify_status_redis_ssl_verify maybe;',
      qr/"maybe"|dify_status_redis_ssl_verify/ ],
    [ 'dify_status_redis_ssl_name;', qr/"dify_status_redis_ssl_name"/ ],
    [ 'dify_status_redis_ssl_trusted_certificate a b;',
      qr/"dify_status_redis_ssl_trusted_certificate"/ ],
    [ 'dify_status_redis 127.0.0.1:6379 tls;', qr/invalid parameter "tls"/ ],
    [ 'dify_status_redis redis:0;',
      qr/invalid address "redis:0": an invalid port/ ],
    [ 'dify_status_redis ::1:6379;', qr/must be written in brackets/ ],
    [ 'dify_status_redis -redis:6379;', qr/an invalid host name/ ],
    [ 'dify_status_redis unix:redis.sock;', qr/an absolute path/ ],
    [ 'dify_status_redis unix:/r.sock ssl;', qr/dify_status_redis_ssl_name/ ],
)
{
    my ($d, $re) = @$case;
    conf_fails("$d fails nginx -t", $re, at('http', $d));
}

for my $d ('dify_status_redis_ssl_verify off;',
           'dify_status_redis_ssl_name redis;')
{
    conf_fails("$d in a location fails", qr/not allowed here/,
        at('location', $d));
}

# only where documented: not in the main context
for my $d ('dify_status on;', 'dify_status_max_body_size 1m;',
           'dify_status_max_documents 10;', 'dify_status_document_ids any;',
           'dify_status_duplicate_ids reject;', 'dify_status_token_prefix x;')
{
    conf_fails("$d in the main context fails", qr/not allowed here/,
        at('main', $d));
}

# a directive given twice in one block
for my $d ([ 'dify_status', 'on', 'off' ],
           [ 'dify_status_max_body_size', '1k', '2k' ],
           [ 'dify_status_max_documents', '1', '2' ],
           [ 'dify_status_document_ids', 'uuid', 'any' ],
           [ 'dify_status_duplicate_ids', 'allow', 'reject' ],
           [ 'dify_status_token_prefix', 'dataset-', 'off' ])
{
    my ($n, $a, $b) = @$d;
    conf_fails("$n twice in one location fails", qr/"$n" directive is duplicate/,
        at('location', "$n $a; $n $b;"));
}

$t->done;
done_testing;
