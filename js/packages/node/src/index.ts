/** cola-fed-node: the cola-fed node for Node.js. */
export {};
