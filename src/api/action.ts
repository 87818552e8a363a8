// A typed action: one HTTP route, its zod schemas and who may call it. The agent
// registers routes from these; the CLI and the console's client call them — one
// definition for route, client and OpenAPI.
import type { z } from 'zod';
import type { Role } from './common.js';

type Schema = z.ZodType | undefined;

export interface Action<
  P extends Schema = Schema,
  Q extends Schema = Schema,
  B extends Schema = Schema,
  R extends z.ZodType = z.ZodType,
> {
  name: string;
  method: 'GET' | 'POST' | 'PATCH' | 'PUT' | 'DELETE';
  /** fastify-style path, e.g. /v1/vms/:name */
  path: string;
  summary: string;
  params?: P;
  query?: Q;
  body?: B;
  response: R;
  /** Roles allowed; admins may call everything. */
  roles: readonly Role[];
  /** Largest request body in bytes (default 1 MiB). */
  bodyLimit?: number;
  /** The body is this document type, sent as is (default: JSON). */
  contentType?: 'application/x-pem-file';
}

export function action<
  P extends Schema = undefined,
  Q extends Schema = undefined,
  B extends Schema = undefined,
  R extends z.ZodType = z.ZodType,
>(a: Action<P, Q, B, R>): Action<P, Q, B, R> {
  return a;
}

export type In<T> = T extends z.ZodType ? z.input<T> : undefined;
export type Out<T> = T extends z.ZodType ? z.output<T> : undefined;

/** What a caller passes: the inputs of the schemas the action has. */
export type CallInput<A> =
  A extends Action<infer P, infer Q, infer B>
    ? (P extends z.ZodType ? { params: z.input<P> } : { params?: undefined }) &
        (Q extends z.ZodType ? { query?: Partial<z.input<Q>> } : { query?: undefined }) &
        (B extends z.ZodType ? { body: z.input<B> } : { body?: undefined })
    : never;

export type ActionOutput<A> = A extends Action<Schema, Schema, Schema, infer R> ? z.output<R> : never;

/** Fills `:param` placeholders. */
export function actionUrl(a: Pick<Action, 'path'>, params: Record<string, string | number> = {}): string {
  return a.path.replace(/:([A-Za-z]+)/g, (_, k: string) => encodeURIComponent(String(params[k] ?? '')));
}
